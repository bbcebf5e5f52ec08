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

/// `out[i] = x[i] · mask[first + i]`.
#[inline(always)]
fn fill(
    out: &mut [std::mem::MaybeUninit<f32>],
    x: &[f32],
    first: u64,
    threshold: u32,
    scale: f32,
    seed: [u32; 2],
) {
    let high = hash(seed[1] ^ hash((first >> 32) as u32));
    for (offset, (v, x)) in out.iter_mut().zip(x).enumerate() {
        let index = (first as u32).wrapping_add(offset as u32);
        let h = hash(hash(index ^ seed[0]) ^ high) >> 8;
        // x·0 rather than a literal 0, as Burn's x·mask: NaN and ±inf stay visible.
        v.write(x * if h < threshold { scale } else { 0.0 });
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fill_avx512(
    out: &mut [std::mem::MaybeUninit<f32>],
    x: &[f32],
    first: u64,
    threshold: u32,
    scale: f32,
    seed: [u32; 2],
) {
    fill(out, x, first, threshold, scale, seed)
}

/// `x · mask`, the mask `1/keep` with probability `keep` and `0` otherwise, element `i` of
/// it a function of (`seed`, `i`) only.
pub(super) fn apply(x: &[f32], keep: f64, seed: [u32; 2]) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Dropout, crate::Pass::Forward);
    let threshold = (keep * (1u32 << 24) as f64).round() as u32;
    let scale = (1.0 / keep) as f32;
    #[cfg(target_arch = "x86_64")]
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(x.len(), |out| {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, x))| {
                let first = (chunk * CHUNK) as u64;
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { fill_avx512(out, x, first, threshold, scale, seed) };
                }
                fill(out, x, first, threshold, scale, seed)
            });
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mask_keeps_the_right_fraction_with_the_right_scale() {
        let (len, keep) = (1 << 20, 0.9);
        let ones = vec![1.0f32; len];
        let mask = super::apply(&ones, keep, [12345, 678]);
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
        let other = super::apply(&ones, keep, [12346, 678]);
        let same = mask.iter().zip(&other).filter(|(a, b)| a == b).count() as f64;
        assert!(
            same / (len as f64) < 0.9,
            "masks of different seeds agree at {same}"
        );
        // The same seed gives the same mask, applied to any input.
        let x: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let y = super::apply(&x, keep, [12345, 678]);
        assert!(y.iter().zip(&x).zip(&mask).all(|((y, x), m)| *y == x * m));
    }
}
