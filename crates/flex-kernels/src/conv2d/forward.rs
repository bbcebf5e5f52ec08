//! The forward convolution on f32 slices in NCHW order: the direct kernel where it pays off,
//! otherwise im2col + `gemm` over groups of images (at least `MIN_COLUMNS` output pixels each),
//! in parallel, each group's im2col block built in a per-thread scratch buffer and multiplied
//! right away. With fewer groups than threads, the products themselves run in parallel. On
//! WebAssembly with relaxed SIMD the product is `wasm_gemm`'s, which takes the im2col rows as
//! they are built, and stride-1 convolutions larger than 1 × 1 skip im2col (`wasm_direct`).

use super::geometry::Geometry;
use super::scratch::{sized, uninit, Scratch};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// The convolution: `[B, C_out, H_out, W_out]` from `x` `[B, C_in, H, W]`,
/// `weight` `[C_out, C_in, k_h, k_w]` and `bias` `[C_out]`.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Conv2d, crate::Pass::Forward);
    #[cfg(target_arch = "x86_64")]
    {
        let plan = super::direct::Plan::new(g, super::direct::FORWARD_POSITIONS);
        if let Some(plan) = plan.filter(super::direct::Plan::pays_off) {
            return super::direct::forward(&plan, x, weight, bias);
        }
    }
    #[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
    if let Some(plan) = super::wasm_direct::Plan::new(g) {
        return super::wasm_direct::forward(&plan, x, weight, bias);
    }
    forward_im2col(g, x, weight, bias)
}

/// [`forward`] through im2col and `gemm`, for every geometry.
pub(super) fn forward_im2col(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (p, co) = (g.p(), g.channels_out);
    let gs = g.group_size();
    let parallelism = g.inner_parallelism();
    crate::flex_tensor::written(g.batch * co * p, |y| {
        y.par_chunks_mut(gs * co * p)
            .zip(x.par_chunks(gs * g.plane()))
            .for_each_init(Scratch::take, |scratch, (y, x)| {
                let n = x.len() / g.plane() * p;
                let [cols, product, _] = &mut scratch.0;
                if n == p {
                    // One image: the product is the output, then the bias is added, exactly
                    // as below (seeding the product with the bias would round differently, and
                    // an image's output must not depend on how many share its batch).
                    multiply((g, x), y, weight, cols, parallelism);
                    if let Some(bias) = bias {
                        for (row, &b) in y.chunks_exact_mut(p).zip(bias) {
                            for d in row {
                                // SAFETY: `multiply` wrote every element.
                                let v = unsafe { d.assume_init() };
                                d.write(v + b);
                            }
                        }
                    }
                    return;
                }
                // [C_out, nb·P] → [nb, C_out, P], adding the bias.
                let product = sized(product, co * n);
                multiply((g, x), uninit(product), weight, cols, parallelism);
                for (index, dst) in y.chunks_exact_mut(p).enumerate() {
                    let (bi, c) = (index / co, index % co);
                    let b = bias.map_or(0.0, |bias| bias[c]);
                    for (d, v) in dst.iter_mut().zip(&product[c * n + bi * p..][..p]) {
                        d.write(v + b);
                    }
                }
            })
    })
}

/// The forward product of a group of images `x`: `dst[C_out × n] = weight[C_out × K] ·
/// im2col(x)[K × n]`. On WebAssembly with relaxed SIMD our fused-multiply-add kernel, which
/// packs the im2col rows as they are built; elsewhere im2col into the scratch `cols`, then
/// `gemm` (its depth cut the same way for every `n`). Either way a column's sum does not depend
/// on the others.
fn multiply(
    (g, x): (&Geometry, &[f32]),
    dst: &mut [MaybeUninit<f32>],
    weight: &[f32],
    cols: &mut Vec<f32>,
    parallelism: gemm::Parallelism,
) {
    let (co, n, k) = (g.channels_out, x.len() / g.plane() * g.p(), g.k());
    #[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
    {
        let _ = cols;
        let parallel = matches!(parallelism, gemm::Parallelism::Rayon(_));
        let row = |r: usize, row: &mut [f32]| super::im2col::im2col_row(g, x, r, row);
        super::wasm_gemm::matmul((co, n, k), dst, weight, row, parallel);
    }
    #[cfg(not(all(target_arch = "wasm32", feature = "wasm-relaxed-simd")))]
    {
        use super::gemm::{matmul_batch_invariant, Mat};
        let cols = sized(cols, k * n);
        super::im2col::im2col(g, x, cols);
        let (weight, cols) = (Mat::row_major(weight, k), Mat::row_major(cols, n));
        matmul_batch_invariant((co, n, k), dst, weight, cols, parallelism);
    }
}
