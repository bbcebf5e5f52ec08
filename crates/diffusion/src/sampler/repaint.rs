//! RePaint inpainting (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion
//! Probabilistic Models"), as diffusers' `RePaintScheduler`: every step regenerates the unknown
//! pixels with a DDIM step (η as given; η = 1 is DDPM's posterior) and replaces the known ones
//! with the input noised to the new step (Algorithm 1, line 5, with the standard deviation
//! √(1 − ᾱ) as diffusers corrects it); now and then the chain jumps back up `jump_length` steps
//! by re-noising (the forward process, β by β) and comes down again, `jump_n_sample` times per
//! jump point (the "resampling" of §4.2), so the two regions harmonise.
//!
//! The schedule of diffusers' `set_timesteps(num_inference_steps, jump_length, jump_n_sample)`
//! interleaves descending steps (model calls) with ascending ones (re-noising, no model call).
//! Here [`Scheduler::timesteps`] lists the model calls only and each call's step also takes the
//! re-noising that follows it, so a RePaint run batches with other runs step by step like any
//! sampler. A run's known image and mask live in its [`SchedulerState`]
//! ([`SchedulerState::with_inpainting`]).

use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

use super::{check_clip_range, check_eta, Scheduler, SchedulerOutput, SchedulerState};
use crate::error::{Error, Result};
use crate::objective::PredictionType;
use crate::schedule::NoiseSchedule;

/// Settings of [`RePaintScheduler`], named as in diffusers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RePaintSchedulerConfig {
    /// Denoising steps (before the jumps add more).
    pub num_inference_steps: usize,
    /// Steps jumped back up at each jump point (RePaint's j; diffusers' default 10).
    pub jump_length: usize,
    /// How many times each jump point is resampled (RePaint's r; diffusers' default 10).
    pub jump_n_sample: usize,
    /// DDIM's η of the unknown region's step (diffusers' pipeline default 0).
    pub eta: f64,
    /// Clip x̂_0 to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    /// The clipping bound.
    pub clip_sample_range: f64,
}

impl Default for RePaintSchedulerConfig {
    fn default() -> Self {
        Self {
            num_inference_steps: 250,
            jump_length: 10,
            jump_n_sample: 10,
            eta: 0.0,
            clip_sample: true,
            clip_sample_range: 1.0,
        }
    }
}

/// The `keep` input of [`SchedulerState::with_inpainting`] from a grey mask image (values in
/// [-1, 1], `[height, width]`) for an image of `channels` channels: white (above mid grey)
/// is regenerated, black kept, as diffusers' inpainting masks; every channel of a pixel alike.
pub fn keep_from_mask(mask: &[f32], channels: usize) -> Vec<f32> {
    let keep: Vec<f32> = mask
        .iter()
        .map(|&v| if v > 0.0 { 0.0 } else { 1.0 })
        .collect();
    keep.repeat(channels)
}

/// diffusers' RePaint timesteps: descending model steps interleaved with jumps back up, in
/// units of `num_train_timesteps / num_inference_steps`.
pub fn repaint_timesteps(
    num_train_timesteps: usize,
    num_inference_steps: usize,
    jump_length: usize,
    jump_n_sample: usize,
) -> Vec<usize> {
    let n = num_inference_steps.min(num_train_timesteps);
    let mut jumps = std::collections::BTreeMap::new();
    let mut j = 0;
    while jump_length > 0 && j + jump_length < n {
        jumps.insert(j, jump_n_sample.saturating_sub(1));
        j += jump_length;
    }
    let mut out = Vec::new();
    let mut t = n;
    while t >= 1 {
        t -= 1;
        out.push(t);
        if let Some(left) = jumps.get_mut(&t).filter(|l| **l > 0) {
            *left -= 1;
            for _ in 0..jump_length {
                t += 1;
                out.push(t);
            }
        }
    }
    let ratio = num_train_timesteps / n;
    out.into_iter().map(|t| t * ratio).collect()
}

impl RePaintSchedulerConfig {
    /// Builds the scheduler for `schedule`; bad settings are [`Error::Sampler`]s. RePaint's
    /// step is written for ε-prediction (as diffusers').
    pub fn init(
        &self,
        schedule: &NoiseSchedule,
        prediction_type: PredictionType,
    ) -> Result<RePaintScheduler> {
        check_eta(self.eta)?;
        check_clip_range(self.clip_sample_range)?;
        let t_max = schedule.num_train_timesteps();
        if self.num_inference_steps == 0 || self.num_inference_steps > t_max {
            return Err(Error::Sampler(format!(
                "num_inference_steps = {} must lie in 1..={t_max}",
                self.num_inference_steps
            )));
        }
        if self.jump_length == 0 || self.jump_n_sample == 0 {
            return Err(Error::Sampler(format!(
                "jump_length = {} and jump_n_sample = {} must be at least 1",
                self.jump_length, self.jump_n_sample
            )));
        }
        let full = repaint_timesteps(
            t_max,
            self.num_inference_steps,
            self.jump_length,
            self.jump_n_sample,
        );
        // diffusers' loop: a timestep below the last one is a model step; one above it
        // re-noises from the last one.
        let mut calls = Vec::new();
        let mut undo_after: Vec<Vec<usize>> = Vec::new();
        let mut t_last = full[0] + 1;
        for &t in &full {
            if t < t_last {
                calls.push(t);
                undo_after.push(Vec::new());
            } else {
                undo_after
                    .last_mut()
                    .expect("the first timestep is a model step")
                    .push(t_last);
            }
            t_last = t;
        }
        Ok(RePaintScheduler {
            config: self.clone(),
            prediction_type,
            alphas_cumprod: schedule.alphas_cumprod.clone(),
            betas: schedule.betas.clone(),
            step_ratio: t_max / self.num_inference_steps,
            timesteps: calls,
            undo_after,
        })
    }
}

/// The RePaint sampler: inpaints the run's masked region ([`SchedulerState::with_inpainting`]).
#[derive(Debug, Clone)]
pub struct RePaintScheduler {
    config: RePaintSchedulerConfig,
    prediction_type: PredictionType,
    alphas_cumprod: Vec<f64>,
    betas: Vec<f64>,
    step_ratio: usize,
    /// The model calls' timesteps.
    timesteps: Vec<usize>,
    /// For each model call, the timesteps re-noised from after it (each `step_ratio` up).
    undo_after: Vec<Vec<usize>>,
}

impl RePaintScheduler {
    /// ᾱ at `t` and at the timestep a step from `t` lands on (1 past the start).
    fn alphas(&self, t: usize) -> (f64, f64) {
        let ab = self.alphas_cumprod[t];
        let ab_prev = t
            .checked_sub(self.step_ratio)
            .map_or(1.0, |p| self.alphas_cumprod[p]);
        (ab, ab_prev)
    }

    /// diffusers' `RePaintScheduler.step` at timestep `t`: x̂_0 from ε̂, the unknown region's
    /// DDIM step and the known region noised to the new step, one `noise` for both.
    ///
    /// # Shapes
    /// - every tensor: `[batch, channels, height, width]`; `keep` is true where the pixel is
    ///   known (kept) and false where it is regenerated.
    pub fn repaint_step(
        &self,
        model_output: Tensor<4>,
        t: usize,
        sample: Tensor<4>,
        known: Tensor<4>,
        keep: Tensor<4, Bool>,
        noise: Tensor<4>,
    ) -> SchedulerOutput {
        let (ab, ab_prev) = self.alphas(t);
        let (mut x0, eps) = self.prediction_type.to_x0_and_eps(model_output, sample, ab);
        if self.config.clip_sample {
            let r = self.config.clip_sample_range as f32;
            x0 = x0.clamp(-r, r);
        }
        let variance = (1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev);
        let std = self.config.eta * variance.sqrt();
        let direction = (1.0 - ab_prev - std * std).max(0.0).sqrt();
        let mut unknown = x0.clone().mul_scalar(ab_prev.sqrt()) + eps.mul_scalar(direction);
        if t > 0 && std > 0.0 {
            unknown = unknown + noise.clone().mul_scalar(std);
        }
        let known = known.mul_scalar(ab_prev.sqrt()) + noise.mul_scalar((1.0 - ab_prev).sqrt());
        // A selection, not a blend: the known pixels are exactly the noised input.
        let prev = unknown.mask_where(keep, known);
        SchedulerOutput {
            prev_sample: prev,
            pred_original_sample: x0,
        }
    }

    /// diffusers' `undo_step`: forward `step_ratio` steps from `t`, x ← √(1 − β) x + √β z
    /// for each β_{t}, …, β_{t + ratio − 1}, a fresh `noise[i]` each.
    pub fn undo_step(&self, mut sample: Tensor<4>, t: usize, noise: &[Tensor<4>]) -> Tensor<4> {
        for (i, z) in noise.iter().enumerate().take(self.step_ratio) {
            let beta = self.betas[t + i];
            sample = sample.mul_scalar((1.0 - beta).sqrt()) + z.clone().mul_scalar(beta.sqrt());
        }
        sample
    }

    /// The full diffusers schedule's length: model calls plus re-noising jumps.
    pub fn jumps(&self) -> usize {
        self.undo_after.iter().map(Vec::len).sum()
    }
}

impl Scheduler for RePaintScheduler {
    fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    fn needs_noise(&self, _step_index: usize) -> bool {
        true
    }

    fn noise_draws(&self, step_index: usize) -> usize {
        1 + self.undo_after[step_index].len() * self.step_ratio
    }

    fn noise_level(&self, step_index: usize) -> (f64, f64) {
        let ab = self.alphas_cumprod[self.timesteps[step_index]];
        (ab.sqrt(), (1.0 - ab).sqrt())
    }

    fn step(
        &self,
        state: &mut SchedulerState,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> SchedulerOutput {
        let (known, keep) = state
            .inpainting
            .clone()
            .expect("a RePaint run needs its image and mask: SchedulerState::with_inpainting");
        let noise = noise.expect("RePaint needs noise: see Scheduler::noise_draws");
        let mut draws = noise.chunk(self.noise_draws(step_index), 0).into_iter();
        let first = draws.next().expect("one draw per step");
        let t = self.timesteps[step_index];
        let mut out = self.repaint_step(model_output, t, sample, known, keep, first);
        let rest: Vec<Tensor<4>> = draws.collect();
        for (k, &from) in self.undo_after[step_index].iter().enumerate() {
            let z = &rest[k * self.step_ratio..(k + 1) * self.step_ratio];
            out.prev_sample = self.undo_step(out.prev_sample, from, z);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_diffusers() {
        // diffusers: RePaintScheduler().set_timesteps(10, jump_length=3, jump_n_sample=2).
        let ts = repaint_timesteps(1000, 10, 3, 2);
        assert_eq!(
            ts,
            [9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
                .map(|t| t * 100)
                .to_vec()
        );
        // No jumps with jump_n_sample 1: plain descending steps.
        assert_eq!(
            repaint_timesteps(1000, 5, 10, 1),
            vec![800, 600, 400, 200, 0]
        );
    }
}
