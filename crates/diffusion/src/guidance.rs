//! Classifier-free guidance (Ho & Salimans 2022).
//!
//! **Convention used throughout this project:** ε̃ = ε_uncond + w · (ε_cond − ε_uncond), so
//! `guidance_scale` w = 1 is the plain conditional model and w = 0 the unconditional one.
//! This is diffusers' `guidance_scale`. The paper and some tools write the same thing as
//! ε̃ = (1 + s) ε_cond − s ε_uncond, with s = w − 1.
//!
//! Both passes run as one batch of 2B (conditional first, then unconditional rows with the
//! null class), see [`crate::sampler::Sampling`].

use burn::tensor::Tensor;

/// Combines the conditional and unconditional predictions: ε_u + w (ε_c − ε_u).
///
/// # Shapes
/// - `cond`, `uncond`: `[batch, channels, height, width]`; output: the same.
pub fn classifier_free_guidance(
    cond: Tensor<4>,
    uncond: Tensor<4>,
    guidance_scale: f64,
) -> Tensor<4> {
    if guidance_scale == 1.0 {
        return cond;
    }
    if guidance_scale == 0.0 {
        return uncond;
    }
    uncond.clone() + (cond - uncond).mul_scalar(guidance_scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};
    use burn::tensor::Device;

    #[test]
    fn scale_one_is_conditional_zero_is_unconditional() {
        let device = Device::flex();
        let mut rng = NoiseRng::new(9);
        let c = rng.normal_tensor([2, 1, 3, 3], &device);
        let u = rng.normal_tensor([2, 1, 3, 3], &device);
        assert_eq!(
            classifier_free_guidance(c.clone(), u.clone(), 1.0).to_data(),
            c.to_data()
        );
        assert_eq!(
            classifier_free_guidance(c.clone(), u.clone(), 0.0).to_data(),
            u.to_data()
        );
        // w = 3 extrapolates: u + 3 (c − u) = 3c − 2u.
        let g = classifier_free_guidance(c.clone(), u.clone(), 3.0);
        let expect = c.mul_scalar(3.0) - u.mul_scalar(2.0);
        let diff = (g - expect).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }
}
