#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # portable-rng
//!
//! A seeded generator whose output is identical on every platform: Gaussian noise for sampling
//! and training, and the uniform draws of batching, label dropout and augmentation.
//!
//! Sampling must give the same image for the same seed on CPU, CUDA and WebGPU-in-the-browser,
//! so noise never comes from a backend's RNG. It comes from ChaCha20 (`rand_chacha`, whose
//! stream is specified bit for bit) through a Box–Muller transform evaluated with the pure-Rust
//! `libm` (the same `log`, `sin`, `cos` code on every target, unlike the platform libm that
//! `f64::ln` calls), in `f64`, then rounded to `f32` and uploaded.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// A seeded standard-normal generator whose output is identical on every platform.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseRng {
    rng: ChaCha20Rng,
    /// The second value of the last Box–Muller pair, not yet handed out.
    spare: Option<f64>,
}

/// The full state of a [`NoiseRng`], for checkpoints (resume continues the same stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseRngState {
    /// The ChaCha seed.
    pub seed: [u8; 32],
    /// The ChaCha stream id.
    pub stream: u64,
    /// The 32-bit word position in the stream.
    pub word_pos: u128,
    /// The unused second Box–Muller value, as raw bits.
    pub spare_bits: Option<u64>,
}

impl NoiseRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            spare: None,
        }
    }

    /// A uniform value in (0, 1]: 53 random bits, never 0 so that `ln` is finite.
    fn uniform_open0(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `0..n` (Lemire's unbiased method), `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        loop {
            let m = (self.rng.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// One standard-normal value (Box–Muller, polar form avoided so the count of draws is
    /// fixed: two uniforms give two normals).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = self.uniform_open0();
        let u2 = self.uniform();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * core::f64::consts::PI * u2;
        self.spare = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }

    /// `n` standard-normal values rounded to `f32`.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.standard_normal() as f32).collect()
    }

    /// The generator's state, for checkpointing.
    pub fn state(&self) -> NoiseRngState {
        NoiseRngState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
            spare_bits: self.spare.map(f64::to_bits),
        }
    }

    /// Restores a generator from [`NoiseRng::state`].
    pub fn from_state(state: &NoiseRngState) -> Self {
        let mut rng = ChaCha20Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        Self {
            rng,
            spare: state.spare_bits.map(f64::from_bits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_noise_different_seed_different_noise() {
        let a = NoiseRng::new(42).normal_vec(1000);
        let b = NoiseRng::new(42).normal_vec(1000);
        let c = NoiseRng::new(43).normal_vec(1000);
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(a.iter().zip(&c).filter(|(x, y)| x != y).count() > 990);
    }

    #[test]
    fn moments_are_standard_normal() {
        let v = NoiseRng::new(1).normal_vec(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        // Standard errors at n = 2e5: mean 0.0022, var 0.0032, kurtosis 0.011.
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "var {var}");
        assert!((kurt - 3.0).abs() < 0.06, "kurtosis {kurt}");
    }

    #[test]
    fn known_stream_is_pinned() {
        // The first values for seed 0 are pinned so that a change of RNG, transform or libm is
        // caught: browser golden images depend on this exact stream.
        let v: Vec<u32> = NoiseRng::new(0)
            .normal_vec(4)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(v, PINNED_SEED0);
    }

    /// Bits of `NoiseRng::new(0).normal_vec(4)` (2.7082598, -0.30730516, 0.21486562,
    /// 0.5036754), recorded from the first run of this code on x86_64.
    const PINNED_SEED0: [u32; 4] = [1076712481, 3197982490, 1046218172, 1057026271];

    #[test]
    fn state_round_trip_continues_the_stream() {
        let mut a = NoiseRng::new(5);
        a.normal_vec(3); // leaves a spare value pending
        let mut b = NoiseRng::from_state(&a.state());
        assert_eq!(a.normal_vec(10), b.normal_vec(10));
        assert_eq!(a.below(1000), b.below(1000));
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = NoiseRng::new(3);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let k = r.below(10) as usize;
            seen[k] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
