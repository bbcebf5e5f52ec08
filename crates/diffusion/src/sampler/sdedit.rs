//! SDEdit (Meng et al. 2021, "SDEdit: Guided Image Synthesis and Editing with Stochastic
//! Differential Equations"): image-to-image by running the reverse process from a noised
//! input instead of pure noise. The input (a sketch, an image to vary) is noised to an
//! intermediate step with the forward process, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4), and
//! any sampler takes the remaining steps; the less noise, the closer the result stays to the
//! input (faithfulness), the more, the more it looks like the model's data (realism).
//!
//! `strength` ∈ (0, 1] picks the starting step as diffusers' img2img pipelines do: of
//! `num_inference_steps` timesteps, the last ⌊num_inference_steps · strength⌋ are taken
//! (`init_timestep`), so strength 1 starts at the first timestep and small strengths take a
//! few low-noise steps. One difference from diffusers: a run starting at the first timestep
//! starts from the noise alone, as plain sampling does (diffusers adds the image there with
//! weight √ᾱ_T ≈ 0.006), so strength 1 is exactly plain sampling from the same seed.

use crate::error::{Error, Result};

/// The index into a sampler's `num_steps` timesteps at which an SDEdit run of `strength`
/// starts: `num_steps − min(⌊num_steps · strength⌋, num_steps)` (diffusers' `get_timesteps`).
/// A strength outside (0, 1], or one that leaves no step to take, is an [`Error::Sampler`].
pub fn sdedit_start_index(num_steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::Sampler(format!(
            "strength = {strength} must lie in (0, 1]"
        )));
    }
    // The product is formed in f64 and floored, as Python's int(n * strength).
    let init_timestep = ((num_steps as f64 * strength).floor() as usize).min(num_steps);
    if init_timestep == 0 {
        return Err(Error::Sampler(format!(
            "strength = {strength} of {num_steps} steps leaves no step to take (raise the \
             strength or the steps: at least 1/{num_steps})"
        )));
    }
    Ok(num_steps - init_timestep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_index_follows_diffusers_img2img() {
        // diffusers: init_timestep = min(int(n * strength), n); t_start = max(n - init, 0).
        assert_eq!(sdedit_start_index(50, 1.0).unwrap(), 0);
        assert_eq!(sdedit_start_index(50, 0.75).unwrap(), 13);
        assert_eq!(sdedit_start_index(50, 0.5).unwrap(), 25);
        assert_eq!(sdedit_start_index(50, 0.3).unwrap(), 35);
        assert_eq!(sdedit_start_index(10, 0.15).unwrap(), 9);
        assert!(sdedit_start_index(10, 0.05)
            .unwrap_err()
            .to_string()
            .contains("no step"));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(sdedit_start_index(50, bad).is_err(), "{bad}");
        }
    }
}
