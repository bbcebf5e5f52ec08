//! Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
//! Eq. 5) noise levels, and the map from a noise level back to a (fractional) training
//! timestep, as diffusers computes both (`_convert_to_karras`, `_sigma_to_t`).
//!
//! Noise levels here are the variance-exploding σ = √((1 − ᾱ) / ᾱ) of a variance-preserving
//! schedule. `pow` and `log` come from the pure-Rust `libm`, so the result is the same on
//! every platform.

/// ρ of Karras et al. Eq. 5; 7 is the paper's choice and diffusers' constant.
const RHO: f64 = 7.0;

/// `n` noise levels from `sigma_max` down to `sigma_min`, evenly spaced in σ^(1/ρ):
/// σ_i = (σ_max^(1/ρ) + i/(n − 1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let min_inv_rho = libm::pow(sigma_min, 1.0 / RHO);
    let max_inv_rho = libm::pow(sigma_max, 1.0 / RHO);
    // numpy's linspace(0, 1, n): i · (1 / (n − 1)), with the last value exactly 1.
    let step = if n > 1 { 1.0 / (n - 1) as f64 } else { 0.0 };
    (0..n)
        .map(|i| {
            let ramp = if n > 1 && i == n - 1 {
                1.0
            } else {
                i as f64 * step
            };
            libm::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), RHO)
        })
        .collect()
}

/// The fractional timestep whose noise level is `sigma`, interpolating linearly in log σ
/// between the two neighbouring training timesteps (`log_sigmas[t]` = log σ_t, ascending in
/// t), clamped to `[0, T − 1]`.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = libm::log(sigma.max(1e-10));
    // diffusers: low = argmax(cumsum(log_sigma − log_sigmas ≥ 0)), i.e. the last timestep whose
    // log σ does not exceed `log_sigma` (0 if none does), at most T − 2.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::NoiseScheduleConfig;

    #[test]
    fn karras_endpoints_and_spacing() {
        let s = karras_sigmas(0.002, 80.0, 5);
        assert_eq!(s.len(), 5);
        assert!((s[0] - 80.0).abs() < 1e-9 && (s[4] - 0.002).abs() < 1e-12);
        // Evenly spaced in σ^(1/7).
        let r: Vec<f64> = s.iter().map(|v| v.powf(1.0 / 7.0)).collect();
        for w in r.windows(3) {
            assert!(((w[0] - w[1]) - (w[1] - w[2])).abs() < 1e-12);
        }
        let one = karras_sigmas(0.1, 10.0, 1);
        assert!(one.len() == 1 && (one[0] - 10.0).abs() < 1e-12, "{one:?}");
    }

    #[test]
    fn sigma_to_t_inverts_the_training_noise_levels() {
        let sched = NoiseScheduleConfig::default().build().unwrap();
        let sigmas: Vec<f64> = sched
            .alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let log_sigmas: Vec<f64> = sigmas.iter().map(|s| s.ln()).collect();
        for t in [0usize, 1, 17, 500, 998, 999] {
            assert!(
                (sigma_to_t(sigmas[t], &log_sigmas) - t as f64).abs() < 1e-9,
                "{t}"
            );
        }
        // Halfway in log σ between two timesteps is halfway in t; out of range clamps.
        let mid = ((log_sigmas[10] + log_sigmas[11]) / 2.0).exp();
        assert!((sigma_to_t(mid, &log_sigmas) - 10.5).abs() < 1e-9);
        assert_eq!(sigma_to_t(1e-6, &log_sigmas), 0.0);
        assert_eq!(sigma_to_t(1e6, &log_sigmas), 999.0);
    }
}
