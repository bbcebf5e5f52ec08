//! The forward convolution on f32 slices in NCHW order: the direct kernel where it pays off,
//! otherwise im2col + `gemm` over groups of images (at least `MIN_COLUMNS` output pixels each),
//! in parallel, each group's im2col block built in a per-thread scratch buffer and multiplied
//! right away. With fewer groups than threads, the products themselves run in parallel.

use super::gemm::{matmul_batch_invariant, Mat};
use super::geometry::Geometry;
use super::im2col::im2col;
use super::scratch::{sized, uninit, Scratch};
use rayon::prelude::*;

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
    forward_im2col(g, x, weight, bias)
}

/// [`forward`] through im2col and `gemm`, for every geometry.
pub(super) fn forward_im2col(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let (k, p, co) = (g.k(), g.p(), g.channels_out);
    let gs = g.group_size();
    let parallelism = g.inner_parallelism();
    crate::flex_tensor::written(g.batch * co * p, |y| {
        y.par_chunks_mut(gs * co * p)
            .zip(x.par_chunks(gs * g.plane()))
            .for_each_init(Scratch::take, |scratch, (y, x)| {
                let n = x.len() / g.plane() * p;
                let [cols, product, _] = &mut scratch.0;
                let cols = sized(cols, k * n);
                im2col(g, x, cols);
                let w = Mat {
                    data: weight,
                    rs: k,
                    cs: 1,
                };
                let cols = Mat {
                    data: cols,
                    rs: n,
                    cs: 1,
                };
                if n == p {
                    // One image: the product is the output, then the bias is added, exactly
                    // as below (seeding the product with the bias would round differently, and
                    // an image's output must not depend on how many share its batch).
                    matmul_batch_invariant((co, n, k), y, w, cols, parallelism);
                    if let Some(bias) = bias {
                        for (row, &b) in y.chunks_exact_mut(p).zip(bias) {
                            for d in row {
                                // SAFETY: `matmul` (accumulate = false) wrote every element.
                                let v = unsafe { d.assume_init() };
                                d.write(v + b);
                            }
                        }
                    }
                    return;
                }
                // [C_out, nb·P] → [nb, C_out, P], adding the bias.
                let product = sized(product, co * n);
                matmul_batch_invariant((co, n, k), uninit(product), w, cols, parallelism);
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
