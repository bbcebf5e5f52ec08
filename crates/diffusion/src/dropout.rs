//! Dropout (Srivastava et al., 2014) with a fast mask for f32 tensors on the Flex CPU backend.
//!
//! Burn's `Dropout` draws a Bernoulli tensor element by element from a host RNG and then
//! multiplies twice (by the mask, then by `1/keep`). On Flex that RNG was about 7 % of a
//! training step of the `mnist` preset. Here the mask — already holding `0` or `1/keep` — is a
//! counter-based hash of (seed, element index), computed in parallel and vectorised, and is
//! applied with one multiplication (a constant for autodiff, so the backward pass is
//! `∂L/∂x = ∂L/∂y · mask`). The seed is drawn from the device's RNG, so a seeded device still
//! gives reproducible masks. Other backends use Burn's `Dropout::forward`.

use burn::nn::Dropout;
use burn::tensor::Tensor;

/// [`Dropout::forward`], with the fast mask on Flex: the identity unless the layer is in
/// training mode on an autodiff device with a non-zero probability.
///
/// # Shapes
/// - `input`: any shape; the output has the same shape.
pub fn forward<const D: usize>(dropout: &Dropout, input: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "flex", feature = "autodiff"))]
    if dropout.training.is_enabled() && input.device().is_autodiff() && dropout.prob > 0.0 {
        if let Some(mask) = flex::mask(&input, dropout.prob) {
            return input * mask;
        }
    }
    dropout.forward(input)
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
mod flex {
    use crate::flex_tensor::tensor;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{DType, Device, Distribution, Tensor};

    /// The scaled keep-mask for an f32 tensor on autodiff Flex, as a plain Flex tensor; `None`
    /// for anything else.
    pub(super) fn mask<const D: usize>(input: &Tensor<D>, prob: f64) -> Option<Tensor<D>> {
        let on_flex = input.dtype() == DType::F32
            && (input
                .clone()
                .try_into_primitive::<Autodiff<Flex, NoCheckpointing>>()
                .is_ok()
                || input
                    .clone()
                    .try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>()
                    .is_ok());
        if !on_flex {
            return None;
        }
        // Two uniform draws from the device's RNG seed the hash.
        let draws = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), &Device::flex())
            .into_data()
            .try_to_vec::<f32>()
            .ok()?;
        let seed = [draws[0].to_bits(), draws[1].to_bits()];
        let dims = input.dims();
        let values = super::kernels::mask(dims.iter().product(), 1.0 - prob, seed);
        Some(Tensor::from_primitive::<Flex>(tensor(values, dims)))
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
mod kernels {
    //! The mask: element i is kept when a 24-bit hash of (seed, i) falls below `keep · 2²⁴`.

    use rayon::prelude::*;

    /// Elements per parallel task.
    const CHUNK: usize = 1 << 14;

    /// Chris Wellons' `lowbias32` integer hash (a full-avalanche 32-bit mixer).
    #[inline(always)]
    fn hash(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^= x >> 16;
        x
    }

    #[inline(always)]
    fn fill(out: &mut [f32], first: u64, threshold: u32, scale: f32, seed: [u32; 2]) {
        let high = hash(seed[1] ^ hash((first >> 32) as u32));
        for (offset, v) in out.iter_mut().enumerate() {
            let index = (first as u32).wrapping_add(offset as u32);
            let h = hash(hash(index ^ seed[0]) ^ high) >> 8;
            *v = if h < threshold { scale } else { 0.0 };
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn fill_avx512(out: &mut [f32], first: u64, threshold: u32, scale: f32, seed: [u32; 2]) {
        fill(out, first, threshold, scale, seed)
    }

    /// `len` values, each `1/keep` with probability `keep` and `0` otherwise.
    pub(super) fn mask(len: usize, keep: f64, seed: [u32; 2]) -> Vec<f32> {
        let threshold = (keep * (1u32 << 24) as f64).round() as u32;
        let scale = (1.0 / keep) as f32;
        #[cfg(target_arch = "x86_64")]
        let fast = crate::flex_tensor::avx512();
        let mut out = vec![0.0f32; len];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = (chunk * CHUNK) as u64;
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { fill_avx512(out, first, threshold, scale, seed) };
                }
                fill(out, first, threshold, scale, seed)
            });
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn mask_keeps_the_right_fraction_with_the_right_scale() {
            let (len, keep) = (1 << 20, 0.9);
            let mask = super::mask(len, keep, [12345, 678]);
            let kept = mask.iter().filter(|&&v| v != 0.0).count() as f64 / len as f64;
            // Binomial standard deviation √(0.9·0.1/2²⁰) ≈ 2.9e-4: 5σ.
            assert!((kept - keep).abs() < 1.5e-3, "kept {kept}");
            assert!(mask
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
            // Neighbours are independent: P(both kept) ≈ keep².
            let pairs = mask
                .windows(2)
                .filter(|w| w[0] != 0.0 && w[1] != 0.0)
                .count() as f64;
            assert!((pairs / (len - 1) as f64 - keep * keep).abs() < 3e-3);
            // Another seed gives another mask.
            let other = super::mask(len, keep, [12346, 678]);
            let same = mask.iter().zip(&other).filter(|(a, b)| a == b).count() as f64;
            assert!(
                same / (len as f64) < 0.9,
                "masks of different seeds agree at {same}"
            );
        }
    }
}

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn drops_and_scales_during_training_only() {
        let device = Device::flex().autodiff();
        let dropout = DropoutConfig::new(0.25).init();
        let x =
            Tensor::<2>::random([64, 512], Distribution::Uniform(1.0, 2.0), &device).require_grad();
        let y = forward(&dropout, x.clone());
        let kept = y
            .clone()
            .not_equal_elem(0.0)
            .float()
            .mean()
            .into_scalar::<f32>();
        assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");
        // Kept values are x / 0.75, and the gradient is the mask.
        let ratio = (y.clone() / x.clone()).mask_fill(y.clone().equal_elem(0.0), 1.0 / 0.75);
        assert!((ratio - 1.0 / 0.75).abs().max().into_scalar::<f32>() < 1e-5);
        let grads = y.clone().sum().backward();
        let dx = x
            .grad(&grads)
            .expect("x grad")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = (y.detach() / x.detach())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(dx.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
        // Evaluation mode and plain devices pass the input through.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        assert_eq!(
            forward(&dropout, plain.clone()).into_data(),
            plain.into_data()
        );
    }
}
