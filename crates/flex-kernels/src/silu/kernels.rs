//! Branch-free element loops that the compiler vectorises, compiled twice on x86-64: for
//! the baseline and for AVX-512 (picked at run time).

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `a·b + c`, fused (one rounding, one instruction) when `FMA`. Only the kernels compiled
/// with AVX-512F (which implies FMA) pass `true`: elsewhere `mul_add` is a libm call.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `eˣ` to within about 2 ulp for x in [−87, 88] (clamped outside): `x = n ln2 + r`,
/// |r| ≤ ln2/2, with `eʳ` from its degree-6 Taylor polynomial (error < r⁷/7! ≈ 1.2e-7) in
/// Horner form — with fused multiply-adds half the instructions and dependency chain.
#[inline(always)]
pub(crate) fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer
    const TAYLOR: [f32; 6] = [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FMA>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    let p = TAYLOR
        .iter()
        .fold(1.0 / 720.0, |p, &c| madd::<FMA>(p, r, c));
    // The low mantissa bits of t hold n (+ 2²² bias); move n + 127 into the exponent field.
    let bits = (t.to_bits() as i32 - 0x4B40_0000 + 127) << 23;
    p * f32::from_bits(bits as u32)
}

/// σ(x) = 1 / (1 + e⁻ˣ), with [`exp`].
#[inline(always)]
pub(crate) fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

#[inline(always)]
fn forward_loop<const FMA: bool>(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(x * sigmoid::<FMA>(x));
    }
}

#[inline(always)]
#[cfg(feature = "autodiff")]
fn backward_loop<const FMA: bool>(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let s = sigmoid::<FMA>(x);
        dx.write(dy * s * (1.0 + x * (1.0 - s)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn forward_avx512(x: &[f32], y: &mut [MaybeUninit<f32>]) {
    forward_loop::<true>(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[cfg(feature = "autodiff")]
fn backward_avx512(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
    backward_loop::<true>(x, dy, dx)
}

/// `x · σ(x)` element-wise.
pub(super) fn forward(x: &[f32]) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Silu, crate::Pass::Forward);
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(x.len(), |y| {
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { forward_avx512(x, y) };
                }
                let _ = fast;
                forward_loop::<false>(x, y)
            })
    })
}

/// `∂L/∂x = ∂L/∂y · σ(x) (1 + x (1 − σ(x)))` element-wise.
#[cfg(feature = "autodiff")]
pub(super) fn backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Silu, crate::Pass::Backward);
    assert_eq!(x.len(), dy.len(), "silu backward: gradient shape");
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(x.len(), |dx| {
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { backward_avx512(x, dy, dx) };
                }
                let _ = fast;
                backward_loop::<false>(x, dy, dx)
            })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = [0.0f32; 2];
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let libm = x.exp();
            for (worst, ours) in worst
                .iter_mut()
                .zip([super::exp::<false>(x), super::exp::<true>(x)])
            {
                *worst = worst.max(((ours - libm) / libm).abs());
            }
        }
        assert!(
            worst.iter().all(|&w| w < 3e-7),
            "max relative error (plain, fused) {worst:?}"
        );
    }
}
