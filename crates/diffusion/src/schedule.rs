//! Noise schedules: β_t and every quantity derived from it, in host-side `f64`.
//!
//! Notation follows Ho et al. 2020 ("DDPM") and diffusers' names, with `t` zero-based
//! (`t = 0 .. num_train_timesteps - 1`, as in diffusers):
//!
//! * `betas[t]` = β_t, `alphas[t]` = α_t = 1 − β_t,
//! * `alphas_cumprod[t]` = ᾱ_t = ∏_{s≤t} α_s (DDPM Eq. 4: q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)),
//! * `alphas_cumprod_prev[t]` = ᾱ_{t−1}, with ᾱ_{−1} = 1,
//! * posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) (DDPM Eqs. 6–7):
//!   β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
//!   μ̃_t = coef1_t · x_0 + coef2_t · x_t with coef1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t) and
//!   coef2_t = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
//! * SNR_t = ᾱ_t / (1 − ᾱ_t).
//!
//! Everything is computed once, in `f64`, on the host, so every backend (CPU, CUDA, WebGPU in
//! the browser) sees exactly the same constants.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How β_t is laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β linear from `beta_start` to `beta_end` (Ho et al. 2020: 1e-4 → 0.02 over T = 1000).
    Linear {
        /// β_0.
        beta_start: f64,
        /// β_{T−1}.
        beta_end: f64,
    },
    /// Cosine ᾱ schedule of Nichol & Dhariwal 2021, Eq. 17:
    /// ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), β_t = 1 − ᾱ(t+1)/ᾱ(t),
    /// clipped to `max_beta` (diffusers' `squaredcos_cap_v2`).
    Cosine {
        /// Offset `s` (0.008 in the paper) that keeps β_0 from being vanishingly small.
        s: f64,
        /// Upper clip of β (0.999 in the paper) that avoids a singularity at t = T.
        max_beta: f64,
    },
    /// β_t = linspace(√beta_start, √beta_end, T)_t², diffusers' `scaled_linear` (Stable
    /// Diffusion's schedule, 0.00085 → 0.012).
    ScaledLinear {
        /// β_0.
        beta_start: f64,
        /// β_{T−1}.
        beta_end: f64,
    },
    /// Sigmoid schedule as in diffusers' `DDPMScheduler` (`beta_schedule="sigmoid"`):
    /// β_t = σ(linspace(−6, 6, T)_t) · (beta_end − beta_start) + beta_start.
    Sigmoid {
        /// Lower limit of β.
        beta_start: f64,
        /// Upper limit of β.
        beta_end: f64,
    },
}

impl BetaSchedule {
    /// DDPM's linear schedule, β 1e-4 → 0.02.
    pub const fn linear() -> Self {
        Self::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// Nichol & Dhariwal's cosine schedule, s = 0.008, β ≤ 0.999.
    pub const fn cosine() -> Self {
        Self::Cosine {
            s: 0.008,
            max_beta: 0.999,
        }
    }

    /// diffusers' sigmoid schedule with DDPM's limits, β 1e-4 → 0.02.
    pub const fn sigmoid() -> Self {
        Self::Sigmoid {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// Parses `linear`, `cosine` or `sigmoid` (with their default constants).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::linear()),
            "cosine" | "squaredcos_cap_v2" => Ok(Self::cosine()),
            "sigmoid" => Ok(Self::sigmoid()),
            other => Err(Error::Schedule(format!(
                "unknown beta schedule `{other}` (expected linear, cosine or sigmoid)"
            ))),
        }
    }
}

/// Settings of a noise schedule, serialised into the model's config JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseScheduleConfig {
    /// Number of diffusion steps T used in training.
    pub num_train_timesteps: usize,
    /// Layout of β_t.
    pub beta_schedule: BetaSchedule,
    /// Rescale to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
    /// Sample Steps are Flawed", Algorithm 1), so ᾱ_{T−1} = 0 exactly. Pair it with
    /// v-prediction: with ε-prediction x̂_0 is undefined at the last timestep.
    #[serde(default)]
    pub rescale_zero_terminal_snr: bool,
}

impl Default for NoiseScheduleConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_schedule: BetaSchedule::linear(),
            rescale_zero_terminal_snr: false,
        }
    }
}

impl NoiseScheduleConfig {
    /// A config with the given schedule and T.
    pub fn new(beta_schedule: BetaSchedule, num_train_timesteps: usize) -> Self {
        Self {
            num_train_timesteps,
            beta_schedule,
            rescale_zero_terminal_snr: false,
        }
    }

    /// Computes the schedule; an out-of-range setting is an [`Error::Schedule`].
    pub fn build(&self) -> Result<NoiseSchedule> {
        NoiseSchedule::new(self)
    }
}

/// A computed noise schedule: every per-timestep constant, indexed by zero-based `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// The settings this was computed from.
    pub config: NoiseScheduleConfig,
    /// β_t.
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t.
    pub alphas: Vec<f64>,
    /// ᾱ_t = ∏_{s≤t} α_s.
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1}, with ᾱ_{−1} = 1.
    pub alphas_cumprod_prev: Vec<f64>,
    /// √ᾱ_t.
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// √(1 − ᾱ_t).
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// 1/√ᾱ_t.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t − 1).
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// Posterior variance β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (DDPM Eq. 7); β̃_0 = 0.
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with β̃_0 replaced by β̃_1, so it is finite (as in Ho et al.'s code).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// Coefficient of x_0 in the posterior mean μ̃_t.
    pub posterior_mean_coef1: Vec<f64>,
    /// Coefficient of x_t in the posterior mean μ̃_t.
    pub posterior_mean_coef2: Vec<f64>,
    /// Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t).
    pub snr: Vec<f64>,
}

fn linspace(start: f64, end: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| start + step * i as f64)
}

fn check_beta_limit(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(Error::Schedule(format!(
            "{name} = {value} must lie in (0, 1)"
        )))
    }
}

/// Rescales betas to zero terminal SNR (Lin et al. 2024, Algorithm 1): shift √ᾱ so its last
/// value is 0, scale it so its first value is unchanged, and recover β from the new ᾱ.
fn rescale_zero_terminal_snr(betas: &[f64]) -> Vec<f64> {
    let mut sqrt_ab: Vec<f64> = betas
        .iter()
        .scan(1.0, |acc, b| {
            *acc *= 1.0 - b;
            Some(acc.sqrt())
        })
        .collect();
    let first = sqrt_ab[0];
    let last = *sqrt_ab.last().expect("non-empty");
    for v in &mut sqrt_ab {
        *v = (*v - last) * first / (first - last);
    }
    let ab: Vec<f64> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(betas.len());
    out.push(1.0 - ab[0]);
    for w in ab.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

impl NoiseSchedule {
    /// Computes every constant of `config`.
    pub fn new(config: &NoiseScheduleConfig) -> Result<Self> {
        let t_max = config.num_train_timesteps;
        if t_max == 0 {
            return Err(Error::Schedule(
                "num_train_timesteps must be at least 1".into(),
            ));
        }
        let mut betas: Vec<f64> = match config.beta_schedule {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => {
                check_beta_limit("beta_start", beta_start)?;
                check_beta_limit("beta_end", beta_end)?;
                linspace(beta_start, beta_end, t_max).collect()
            }
            BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            } => {
                check_beta_limit("beta_start", beta_start)?;
                check_beta_limit("beta_end", beta_end)?;
                linspace(beta_start.sqrt(), beta_end.sqrt(), t_max)
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::Sigmoid {
                beta_start,
                beta_end,
            } => {
                check_beta_limit("beta_start", beta_start)?;
                check_beta_limit("beta_end", beta_end)?;
                linspace(-6.0, 6.0, t_max)
                    .map(|x| 1.0 / (1.0 + (-x).exp()) * (beta_end - beta_start) + beta_start)
                    .collect()
            }
            BetaSchedule::Cosine { s, max_beta } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(Error::Schedule(format!(
                        "cosine offset s = {s} must be ≥ 0"
                    )));
                }
                check_beta_limit("max_beta", max_beta)?;
                let f = |t: f64| {
                    ((t + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..t_max)
                    .map(|i| {
                        let t1 = i as f64 / t_max as f64;
                        let t2 = (i + 1) as f64 / t_max as f64;
                        (1.0 - f(t2) / f(t1)).min(max_beta)
                    })
                    .collect()
            }
        };
        if config.rescale_zero_terminal_snr {
            if t_max < 2 {
                return Err(Error::Schedule(
                    "zero-terminal-SNR rescaling needs num_train_timesteps ≥ 2".into(),
                ));
            }
            betas = rescale_zero_terminal_snr(&betas);
        }
        // β_T = 1 is the one legal value outside (0, 1): it is what zero terminal SNR means.
        for (t, &b) in betas.iter().enumerate() {
            let terminal_one = config.rescale_zero_terminal_snr && t + 1 == t_max && b <= 1.0;
            if !(b.is_finite() && b > 0.0 && (b < 1.0 || terminal_one)) {
                return Err(Error::Schedule(format!(
                    "beta at t = {t} is {b}, outside (0, 1)"
                )));
            }
        }
        Ok(Self::from_betas(config.clone(), betas))
    }

    fn from_betas(config: NoiseScheduleConfig, betas: Vec<f64>) -> Self {
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod[..alphas_cumprod.len() - 1].iter().copied())
            .collect();
        let map = |f: &dyn Fn(f64) -> f64| alphas_cumprod.iter().map(|&a| f(a)).collect::<Vec<_>>();
        let sqrt_alphas_cumprod = map(&|a| a.sqrt());
        let sqrt_one_minus_alphas_cumprod = map(&|a| (1.0 - a).sqrt());
        let sqrt_recip_alphas_cumprod = map(&|a| 1.0 / a.sqrt());
        let sqrt_recipm1_alphas_cumprod = map(&|a| (1.0 / a - 1.0).sqrt());
        let snr = map(&|a| a / (1.0 - a));
        let n = betas.len();
        let mut posterior_variance = Vec::with_capacity(n);
        let mut posterior_mean_coef1 = Vec::with_capacity(n);
        let mut posterior_mean_coef2 = Vec::with_capacity(n);
        for t in 0..n {
            let (b, a, ab, ab_prev) = (
                betas[t],
                alphas[t],
                alphas_cumprod[t],
                alphas_cumprod_prev[t],
            );
            posterior_variance.push(b * (1.0 - ab_prev) / (1.0 - ab));
            posterior_mean_coef1.push(b * ab_prev.sqrt() / (1.0 - ab));
            posterior_mean_coef2.push(a.sqrt() * (1.0 - ab_prev) / (1.0 - ab));
        }
        let first_nonzero = if n > 1 {
            posterior_variance[1]
        } else {
            posterior_variance[0]
        };
        let posterior_log_variance_clipped = posterior_variance
            .iter()
            .enumerate()
            .map(|(t, &v)| if t == 0 { first_nonzero.ln() } else { v.ln() })
            .collect();
        Self {
            config,
            betas,
            alphas,
            alphas_cumprod,
            alphas_cumprod_prev,
            sqrt_alphas_cumprod,
            sqrt_one_minus_alphas_cumprod,
            sqrt_recip_alphas_cumprod,
            sqrt_recipm1_alphas_cumprod,
            posterior_variance,
            posterior_log_variance_clipped,
            posterior_mean_coef1,
            posterior_mean_coef2,
            snr,
        }
    }

    /// T, the number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.betas.len()
    }

    /// ᾱ at `t`, with `t = None` meaning "before the first step" (ᾱ = 1), which samplers use
    /// for the final step.
    pub fn alpha_cumprod_at(&self, t: Option<usize>) -> f64 {
        t.map_or(1.0, |t| self.alphas_cumprod[t])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn linear_matches_ddpm_reference() {
        let s = NoiseScheduleConfig::default().build().unwrap();
        assert_eq!(s.num_train_timesteps(), 1000);
        assert_eq!(s.betas[0], 1e-4);
        assert!((s.betas[999] - 0.02).abs() < 1e-15);
        // ᾱ_{T-1} of DDPM's linear schedule: numpy
        // `np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))[-1]`
        // = 4.035829765e-05: close to, but not, zero (the flaw Lin et al. 2024 point out).
        assert!(
            rel(s.alphas_cumprod[999], 4.035829765375676e-05) < 1e-9,
            "{}",
            s.alphas_cumprod[999]
        );
        // ᾱ_0 = 1 − β_0 and the posterior variance at t = 0 is zero.
        assert_eq!(s.alphas_cumprod[0], 1.0 - 1e-4);
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
        // Independent products: ᾱ_t √ and recips agree with each other.
        for t in [0, 1, 500, 999] {
            let ab = s.alphas_cumprod[t];
            assert!((s.sqrt_alphas_cumprod[t].powi(2) - ab).abs() < 1e-15);
            assert!((s.sqrt_one_minus_alphas_cumprod[t].powi(2) - (1.0 - ab)).abs() < 1e-15);
            assert!(
                rel(
                    s.sqrt_recip_alphas_cumprod[t] * s.sqrt_alphas_cumprod[t],
                    1.0
                ) < 1e-14
            );
            assert!(rel(s.snr[t], ab / (1.0 - ab)) < 1e-14);
            assert!(
                rel(s.sqrt_recipm1_alphas_cumprod[t].powi(2), 1.0 / ab - 1.0) < 1e-12,
                "t={t}"
            );
        }
    }

    #[test]
    fn posterior_coefficients_reproduce_x0_when_xt_is_consistent() {
        // If x_t = √ᾱ_t x0 (no noise), μ̃_t must equal √ᾱ_{t−1} x0 (DDPM Eq. 7 at ε = 0).
        let s = NoiseScheduleConfig::default().build().unwrap();
        for t in [1, 10, 400, 999] {
            let mu =
                s.posterior_mean_coef1[t] + s.posterior_mean_coef2[t] * s.sqrt_alphas_cumprod[t];
            assert!(rel(mu, s.alphas_cumprod_prev[t].sqrt()) < 1e-12, "t={t}");
        }
    }

    #[test]
    fn cosine_matches_closed_form() {
        let s = NoiseScheduleConfig::new(BetaSchedule::cosine(), 1000)
            .build()
            .unwrap();
        // Reference: ᾱ_t of the cosine schedule is f(t+1)/f(0) with f as in Nichol & Dhariwal
        // Eq. 17 (β clipping is inactive here). Values computed with numpy:
        // f = lambda t: np.cos((t/1000 + 0.008)/1.008*np.pi/2)**2; f(t + 1)/f(0).
        let reference = [
            (0, 0.999958715775178_f64),
            (499, 0.49384359044063775),
            (899, 0.024091724140085854),
        ];
        for (t, ab) in reference {
            assert!(
                rel(s.alphas_cumprod[t], ab) < 1e-9,
                "t={t}: {} vs {ab}",
                s.alphas_cumprod[t]
            );
        }
        assert_eq!(s.betas[999], 0.999, "last β is clipped at 0.999");
        assert!(s.alphas_cumprod[999] < 1e-6);
    }

    #[test]
    fn sigmoid_is_monotone_and_bounded() {
        let s = NoiseScheduleConfig::new(BetaSchedule::sigmoid(), 1000)
            .build()
            .unwrap();
        assert!(s.betas.windows(2).all(|w| w[1] > w[0]));
        // σ(−6) = 0.0024726231566347743, σ(6) = 0.9975273768433653.
        assert!(rel(s.betas[0], 0.0024726231566347743 * (0.02 - 1e-4) + 1e-4) < 1e-12);
        assert!(rel(s.betas[999], 0.9975273768433653 * (0.02 - 1e-4) + 1e-4) < 1e-12);
    }

    #[test]
    fn zero_terminal_snr_rescaling() {
        let mut cfg = NoiseScheduleConfig::default();
        cfg.rescale_zero_terminal_snr = true;
        let s = cfg.build().unwrap();
        let base = NoiseScheduleConfig::default().build().unwrap();
        assert_eq!(s.alphas_cumprod[999], 0.0);
        assert_eq!(s.snr[999], 0.0);
        assert!(rel(s.sqrt_alphas_cumprod[0], base.sqrt_alphas_cumprod[0]) < 1e-12);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn bad_configs_are_errors() {
        let bad = [
            NoiseScheduleConfig::new(BetaSchedule::linear(), 0),
            NoiseScheduleConfig::new(
                BetaSchedule::Linear {
                    beta_start: 0.0,
                    beta_end: 0.02,
                },
                10,
            ),
            NoiseScheduleConfig::new(
                BetaSchedule::Linear {
                    beta_start: 1e-4,
                    beta_end: 1.5,
                },
                10,
            ),
            NoiseScheduleConfig::new(
                BetaSchedule::Sigmoid {
                    beta_start: f64::NAN,
                    beta_end: 0.02,
                },
                10,
            ),
            NoiseScheduleConfig::new(
                BetaSchedule::Cosine {
                    s: 0.008,
                    max_beta: 1.0,
                },
                10,
            ),
        ];
        for cfg in bad {
            let err = cfg.build().unwrap_err();
            assert!(matches!(err, Error::Schedule(_)), "{cfg:?}: {err}");
        }
        assert!(BetaSchedule::from_name("quadratic").is_err());
    }
}
