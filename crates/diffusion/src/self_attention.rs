//! Scaled dot-product self-attention over the pixels of a feature map (Vaswani et al., 2017,
//! eq. 1: `softmax(QKᵀ/√d)·V`, per head), read straight from the NCHW output of the block's
//! 1×1 `qkv` convolution, with a parallel kernel for f32 tensors on plain Flex (sampling).
//!
//! Burn's route is a reshape and two `swap_dims` (each a single-threaded strided copy on
//! Flex), its attention, and a copy back to NCHW; in a sampling step of the `mnist` U-Net the
//! copies ran on one core while the other waited. Here each (image, head) is one task whose
//! loops all run along the query pixels i, contiguous in NCHW: the transposed scores
//! `sᵀ[j, i] = Σ_e k[e, j]·q[e, i] / √d` as sums of rows of Q, the softmax over j (less its
//! maximum), and `out[e, i] = Σ_j v[e, j]·p[j, i]` as sums of rows of P, written in NCHW.
//! Under autodiff (training), for maps larger than 8×8 and on other backends it is Burn's
//! own attention.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

/// Self-attention of the `num_heads` heads in `qkv`, whose channels are Q, then K, then V
/// (each `C` channels, head `h` being channels `h·d..(h + 1)·d` of each, `d = C / num_heads`).
///
/// # Shapes
/// - `qkv`: `[batch, 3·C, height, width]`
/// - output: `[batch, C, height, width]`, channel `h·d + e` = component `e` of head `h`.
pub fn self_attention(qkv: Tensor<4>, num_heads: usize) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let qkv = match flex::try_attention(qkv, num_heads) {
        Ok(y) => return y,
        Err(qkv) => qkv,
    };
    let [b, c3, h, w] = qkv.dims();
    let (c, n) = (c3 / 3, h * w);
    let d = c / num_heads;
    let qkv = qkv.reshape([b * 3, num_heads, d, n]).swap_dims(2, 3);
    let mut parts = qkv.reshape([b, 3, num_heads, n, d]).chunk(3, 1).into_iter();
    let mut next = || parts.next().expect("q, k, v").reshape([b, num_heads, n, d]);
    let (q, k, v) = (next(), next(), next());
    let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
    out.swap_dims(2, 3).reshape([b, c, h, w])
}

#[cfg(feature = "flex")]
// `Err` hands the input back for Burn's own op (the routine fallback, not an error); boxing it
// to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use crate::flex_tensor::{tensor, values};
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor};

    /// Largest feature map (in pixels) the fused kernel takes.
    pub(super) const MAX_PIXELS: usize = 64;

    /// The fused kernel for f32 tensors on plain Flex and maps of up to [`MAX_PIXELS`]
    /// pixels; hands `qkv` back otherwise.
    pub(super) fn try_attention(qkv: Tensor<4>, heads: usize) -> Result<Tensor<4>, Tensor<4>> {
        let [b, c3, h, w] = qkv.dims();
        let fits = c3 % 3 == 0 && heads > 0 && (c3 / 3) % heads == 0 && b * c3 * h * w > 0;
        // The kernel's row updates are memory-bound; past small maps (the `mnist` U-Net's 7×7)
        // Burn's route, whose products go through gemm, is faster (at `cifar10_ddpm`'s 16×16
        // the kernel took 11 % of a forward pass against 2 %).
        let fits = fits && h * w <= MAX_PIXELS;
        if qkv.dtype() != DType::F32 || qkv.device().is_autodiff() || !fits {
            return Err(qkv);
        }
        let Ok(p) = qkv.clone().try_into_primitive::<Flex>() else {
            return Err(qkv);
        };
        let p = p.to_contiguous();
        let y = super::kernels::attention(values(&p), [b, c3 / 3, h * w], heads);
        Ok(Tensor::from_primitive::<Flex>(tensor(y, [b, c3 / 3, h, w])))
    }
}

#[cfg(feature = "flex")]
mod kernels {
    //! The per-(image, head) loops on slices laid out `[batch, channels, pixels]`.

    use crate::silu::kernels::{exp, madd};
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// Calls of [`attention`], so tests can check that the fused path ran.
    #[cfg(test)]
    pub(super) static CALLS: crate::flex_tensor::Calls = crate::flex_tensor::Calls::new();

    /// `y += a·x`.
    #[inline(always)]
    fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = madd::<FMA>(a, x, *y);
        }
    }

    /// Floats of scratch [`head`] needs for `n` pixels and head size `d`.
    fn scratch_len(n: usize, d: usize) -> usize {
        let np = n.next_multiple_of(16);
        (d + n + 3) * np
    }

    /// One head: `q`, `k`, `v` are `[d, n]`, `out` is `[d, n]`, `scratch` holds
    /// [`scratch_len`] floats. Every loop runs along the query pixels i (contiguous in q and in
    /// the output), in rows padded to whole vectors (`np`), so it vectorises without horizontal
    /// sums or scalar tails: the scores are kept transposed, `sᵀ[j, i]`.
    #[inline(always)]
    fn head<const FMA: bool>(
        (q, k, v): (&[f32], &[f32], &[f32]),
        n: usize,
        scale: f32,
        scratch: &mut [f32],
        out: &mut [MaybeUninit<f32>],
    ) {
        let np = n.next_multiple_of(16);
        let d = q.len() / n;
        let (qp, rest) = scratch.split_at_mut(d * np);
        let (scores, rest) = rest.split_at_mut(n * np);
        let (max, rest) = rest.split_at_mut(np);
        let (sum, acc) = rest.split_at_mut(np);
        // Q with rows padded by zeros.
        for (dst, src) in qp.chunks_exact_mut(np).zip(q.chunks_exact(n)) {
            dst[..n].copy_from_slice(src);
            dst[n..].fill(0.0);
        }
        // sᵀ[j, i] = Σ_e k[e, j]·q[e, i] / √d
        scores.fill(0.0);
        for (j, row) in scores.chunks_exact_mut(np).enumerate() {
            for (q, k) in qp.chunks_exact(np).zip(k.chunks_exact(n)) {
                axpy::<FMA>(row, k[j] * scale, q);
            }
        }
        // Softmax over j for every i, less the maximum for range.
        max.fill(f32::NEG_INFINITY);
        for row in scores.chunks_exact(np) {
            for (m, &s) in max.iter_mut().zip(row) {
                *m = m.max(s);
            }
        }
        sum.fill(0.0);
        for row in scores.chunks_exact_mut(np) {
            for ((s, &m), total) in row.iter_mut().zip(&*max).zip(sum.iter_mut()) {
                *s = exp::<FMA>(*s - m);
                *total += *s;
            }
        }
        // out[e, i] = Σ_j v[e, j]·p[j, i] / Σ_j p[j, i]
        for (v, out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            acc.fill(0.0);
            for (&v, row) in v.iter().zip(scores.chunks_exact(np)) {
                axpy::<FMA>(acc, v, row);
            }
            for ((o, &a), &total) in out.iter_mut().zip(&*acc).zip(&*sum) {
                o.write(a / total);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn head_avx512(
        qkv: (&[f32], &[f32], &[f32]),
        n: usize,
        scale: f32,
        scratch: &mut [f32],
        out: &mut [MaybeUninit<f32>],
    ) {
        head::<true>(qkv, n, scale, scratch, out)
    }

    /// Attention of every image and head of `qkv` (`[b, 3c, n]` as `[b, c, n]` = `dims`);
    /// returns `[b, c, n]`.
    pub(super) fn attention(qkv: &[f32], [b, c, n]: [usize; 3], heads: usize) -> Vec<f32> {
        #[cfg(test)]
        CALLS.hit(0);
        assert_eq!(qkv.len(), b * 3 * c * n);
        let d = c / heads;
        let scale = (1.0 / (d as f64).sqrt()) as f32;
        let fast = crate::flex_tensor::avx512();
        crate::flex_tensor::written(b * c * n, |y| {
            y.par_chunks_mut(d * n)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (task, out)| {
                    let (image, h) = (task / heads, task % heads);
                    let at = |part: usize| &qkv[((image * 3 + part) * c + h * d) * n..][..d * n];
                    let qkv = (at(0), at(1), at(2));
                    scratch.resize(scratch_len(n, d), 0.0);
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the CPU has AVX-512F (checked above).
                        return unsafe { head_avx512(qkv, n, scale, scratch, out) };
                    }
                    let _ = fast;
                    head::<false>(qkv, n, scale, scratch, out)
                })
        })
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn fused_attention_matches_burn() {
        let device = Device::flex();
        // (batch, channels, height, width, heads): the `mnist` U-Net's 7×7, several heads,
        // a rectangular map with pixels not a multiple of 16, one pixel.
        for (b, c, h, w, heads) in [
            (3, 64, 7, 7, 1),
            (2, 24, 3, 5, 2),
            (2, 32, 6, 6, 4),
            (1, 8, 1, 1, 1),
        ] {
            let qkv =
                Tensor::<4>::random([b, 3 * c, h, w], Distribution::Normal(0.0, 1.5), &device);
            let before = kernels::CALLS.get(0);
            let ours = self_attention(qkv.clone(), heads);
            assert!(kernels::CALLS.get(0) > before, "the fused path did not run");
            // Burn's route: the same function on the autodiff device.
            let ad = Tensor::<4>::from_data(qkv.into_data(), &device.clone().autodiff());
            let reference = self_attention(ad, heads);
            let reference = Tensor::<4>::from_data(reference.into_data(), &device);
            assert_eq!(ours.dims(), [b, c, h, w]);
            let err = relative_error(ours, reference);
            assert!(
                err < 1e-5,
                "{b}×{c}×{h}×{w}, {heads} heads: relative error {err}"
            );
        }
    }
}
