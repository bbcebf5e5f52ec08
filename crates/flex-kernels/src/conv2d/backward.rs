//! Gradients of the convolution on f32 slices: the stride-1 input gradient as a forward
//! convolution by the flipped, transposed kernel (padding k − 1 − p); otherwise
//! ∂L/∂x = col⁻¹(Wᵀ · ∂L/∂y), scatter-added back; ∂L/∂W = Σ_groups ∂L/∂y · col(x)ᵀ;
//! ∂L/∂b = Σ ∂L/∂y over images and pixels.

use super::forward::forward;
use super::gemm::{matmul, Mat};
use super::geometry::Geometry;
use super::im2col::{col2im, im2col};
use super::scratch::{add, sized, uninit, Scratch};
use rayon::prelude::*;

/// `W'[c_in, c_out, i, j] = W[c_out, c_in, k_h − 1 − i, k_w − 1 − j]`.
fn flip_transpose(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let [kh, kw] = g.kernel;
    let (ci, co) = (g.channels_in, g.channels_out);
    let mut out = vec![0.0f32; weight.len()];
    for o in 0..co {
        for c in 0..ci {
            for i in 0..kh {
                for j in 0..kw {
                    out[((c * co + o) * kh + i) * kw + j] =
                        weight[((o * ci + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                }
            }
        }
    }
    out
}

/// Per-worker state of the backward pass: partial weight and bias gradients and scratch.
struct Partial {
    dw: Vec<f32>,
    scratch: Scratch,
}

impl Partial {
    fn new() -> Self {
        Self {
            dw: Vec::new(),
            scratch: Scratch::take(),
        }
    }
}

/// (∂L/∂x, ∂L/∂W, ∂L/∂b), each present if it was asked for.
pub(super) type Gradients = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// Gradients of the convolution with respect to x, the weight and the bias (each only if
/// `need` says so), given `grad` = ∂L/∂y `[B, C_out, H_out, W_out]`.
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    need: [bool; 3],
) -> Gradients {
    crate::fast_path::hit(crate::Kernel::Conv2d, crate::Pass::Backward);
    let [need_x, need_w, need_b] = need;
    let (k, p, co) = (g.k(), g.p(), g.channels_out);
    let gs = g.group_size();
    let parallelism = g.inner_parallelism();
    // For stride 1 the input gradient is itself a convolution (of ∂L/∂y with the flipped,
    // transposed kernel): run it as one, writing ∂L/∂x directly, instead of a product with
    // the short inner dimension C_out followed by a scatter-add.
    let transposed = need_x.then(|| g.input_gradient_as_convolution()).flatten();
    let dx_by_convolution =
        transposed.map(|gt| forward(&gt, grad, &flip_transpose(g, weight), None));
    let need_x = need_x && dx_by_convolution.is_none();
    #[cfg(target_arch = "x86_64")]
    let dw_direct = need_w
        .then(|| super::direct::Plan::new(g, super::direct::WEIGHT_GRADIENT_POSITIONS))
        .flatten()
        .filter(super::direct::Plan::pays_off)
        .and_then(|plan| super::direct::weight_gradient(&plan, x, grad));
    #[cfg(not(target_arch = "x86_64"))]
    let dw_direct: Option<Vec<f32>> = None;
    let need_w = need_w && dw_direct.is_none();
    let db = need_b.then(|| bias_gradient(g, grad));
    if !need_x && !need_w {
        return (dx_by_convolution, dw_direct, db);
    }
    let mut dx = need_x.then(|| vec![0.0f32; g.batch * g.plane()]);
    let groups = g.batch.div_ceil(gs);
    let slots: Vec<Option<&mut [f32]>> = match dx.as_mut() {
        Some(dx) => dx.chunks_mut(gs * g.plane()).map(Some).collect(),
        None => (0..groups).map(|_| None).collect(),
    };
    let dw = slots
        .into_par_iter()
        .enumerate()
        .fold(Partial::new, |mut acc, (group, dx)| {
            let [cols, dcols, dy_buffer] = &mut acc.scratch.0;
            let b0 = group * gs;
            let nb = gs.min(g.batch - b0);
            let n = nb * p;
            let grad = &grad[b0 * co * p..(b0 + nb) * co * p];
            // ∂L/∂y of the group as [C_out, nb·P] (already so for one image).
            let dy: &[f32] = if nb == 1 {
                grad
            } else {
                let dy = sized(dy_buffer, co * n);
                for (c, row) in dy.chunks_exact_mut(n).enumerate() {
                    for (bi, dst) in row.chunks_exact_mut(p).enumerate() {
                        dst.copy_from_slice(&grad[(bi * co + c) * p..][..p]);
                    }
                }
                dy
            };
            if need_w {
                let cols = sized(cols, k * n);
                im2col(g, &x[b0 * g.plane()..(b0 + nb) * g.plane()], cols);
                acc.dw.resize(co * k, 0.0);
                let lhs = Mat {
                    data: dy,
                    rs: n,
                    cs: 1,
                };
                let rhs = Mat {
                    data: cols,
                    rs: 1,
                    cs: n,
                };
                matmul((co, k, n), uninit(&mut acc.dw), true, lhs, rhs, parallelism);
            }
            if let Some(dx) = dx {
                let dcols = sized(dcols, k * n);
                let wt = Mat {
                    data: weight,
                    rs: 1,
                    cs: k,
                };
                let dy = Mat {
                    data: dy,
                    rs: n,
                    cs: 1,
                };
                matmul((k, n, co), uninit(dcols), false, wt, dy, parallelism);
                col2im(g, dcols, dx);
            }
            acc
        })
        .map(|acc| acc.dw)
        .reduce(Vec::new, add);
    let dx = dx.or(dx_by_convolution);
    let dw = need_w.then(|| if dw.is_empty() { vec![0.0; co * k] } else { dw });
    (dx, dw.or(dw_direct), db)
}

/// ∂L/∂b: the sums of `grad` (`[B, C_out, H_out, W_out]`) over images and pixels.
fn bias_gradient(g: &Geometry, grad: &[f32]) -> Vec<f32> {
    let p = g.p();
    let sums = grad
        .par_chunks(g.channels_out * p)
        .fold(Vec::new, |mut sums: Vec<f64>, image| {
            sums.resize(g.channels_out, 0.0);
            for (sum, row) in sums.iter_mut().zip(image.chunks_exact(p)) {
                // 16 running sums, so the loop vectorises.
                let mut lanes = [0.0f32; 16];
                let mut chunks = row.chunks_exact(16);
                for chunk in &mut chunks {
                    for (l, v) in lanes.iter_mut().zip(chunk) {
                        *l += v;
                    }
                }
                let rest = chunks.remainder().iter().sum::<f32>();
                *sum += (lanes.iter().sum::<f32>() + rest) as f64;
            }
            sums
        })
        .reduce(Vec::new, add);
    (0..g.channels_out)
        .map(|c| sums.get(c).copied().unwrap_or(0.0) as f32)
        .collect()
}
