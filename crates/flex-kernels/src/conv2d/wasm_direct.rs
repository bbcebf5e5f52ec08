//! Direct stride-1 convolution for WebAssembly with relaxed SIMD: `wasm_gemm`'s register-blocked
//! product reading its right operand straight from the zero-padded grid of `super::grid`, so
//! the im2col matrix is neither built nor packed. Building and packing its rows took 17 % of a
//! sampling step; without them a step takes 0.93–0.95× the time (`docs/web-bundle.md`). The
//! grid's waste at 7 × 7 (64 positions for 49 pixels) measured no slower than im2col there.
//!
//! Depth step `p = c · k_h k_w + i · k_w + j` (im2col's row order) of the column panel that
//! starts at grid position `q₀` is lane `c` of the padded buffer from `q₀ + i · W_p + j` on:
//! `NR` consecutive floats, read in place. Every output element is the same chain of fused
//! multiply-adds over the depth in the same order as im2col + `wasm_gemm` (from zero, depth
//! blocks resuming from the stored value), and the bias is added after it, so the result is
//! theirs bit for bit: an image's output is the same alone as in any batch. The grid positions
//! between images and right of each row are computed and dropped.
//!
//! Like `wasm_gemm`, only a wasm build with `wasm-relaxed-simd` runs it; natively it compiles
//! with 4-lane arrays, so `cargo test` checks it against that path.

use super::geometry::Geometry;
use super::grid::Grid;
use super::scratch::{sized, Scratch, Shared};
use super::wasm_gemm::{pack_lhs, panel_product, Panel, NR};
use rayon::prelude::*;

/// Fewest grid positions per group of images (as im2col's columns per group).
const MIN_POSITIONS: usize = 256;

/// Where a convolution's grid and padded buffer lie; the same for every group of images.
pub(super) struct Plan {
    grid: Grid,
    /// Floats per channel lane of the padded buffer.
    lane: usize,
    /// Offset in the padded buffer of each depth step `(c, i, j)`, from a panel's first
    /// position.
    rows: Vec<usize>,
}

impl Plan {
    /// The plan of a stride-1, dilation-1 convolution with a kernel larger than 1 × 1 (for
    /// 1 × 1, im2col is a plain copy); `None` otherwise.
    pub(super) fn new(g: &Geometry) -> Option<Self> {
        let grid = Grid::new(g, MIN_POSITIONS)?;
        let [kh, kw] = g.kernel;
        if kh * kw == 1 {
            return None;
        }
        // A panel reads NR positions at each tap's offset: the last panel of a group reads up
        // to its rounded-up end plus the largest offset.
        let lane = grid.positions(grid.group).next_multiple_of(NR) + (kh - 1) * grid.width + kw;
        let offsets = grid.offsets();
        let rows = (0..g.channels_in)
            .flat_map(|c| offsets.iter().map(move |o| c * lane + o))
            .collect();
        Some(Self { grid, lane, rows })
    }
}

/// A column panel on the padded grid: depth step `p` is `rows[p]` floats past `base`.
#[derive(Clone, Copy)]
struct Shifted {
    base: *const f32,
    rows: *const usize,
}

impl Panel for Shifted {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        self.base.add(*self.rows.add(p))
    }

    #[inline(always)]
    unsafe fn from(self, k0: usize) -> Self {
        Self {
            base: self.base,
            rows: self.rows.add(k0),
        }
    }
}

/// The convolution `[B, C_out, H_out, W_out]` (see [`super::forward::forward`]).
pub(super) fn forward(plan: &Plan, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Conv2dDirect, crate::Pass::Forward);
    let grid = &plan.grid;
    let g = &grid.g;
    let (co, k, p) = (g.channels_out, g.k(), g.p());
    let mut lhs = Vec::new();
    pack_lhs(co, k, weight, &mut lhs);
    let (plane, out_plane) = (g.channels_in * g.height * g.width, co * p);
    // Fewer groups than threads: the panels of each group are shared among the threads.
    let parallel = g.batch.div_ceil(grid.group) < rayon::current_num_threads();
    crate::flex_tensor::written(g.batch * out_plane, |y| {
        y.par_chunks_mut(grid.group * out_plane)
            .zip(x.par_chunks(grid.group * plane))
            .for_each_init(Scratch::take, |scratch, (y, x)| {
                let n = x.len() / plane;
                let [xp, product, _] = &mut scratch.0;
                let xp = sized(xp, g.channels_in * plan.lane);
                grid.pad(x, xp, plan.lane, |dst, src| match src {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0.0),
                });
                let cols = grid.positions(n).next_multiple_of(NR);
                let product = sized(product, co * cols);
                let out = Shared(product.as_mut_ptr());
                let panel = |index: usize| {
                    let panel = Shifted {
                        // SAFETY: the panel's reads lie inside the lane (`Plan::new`).
                        base: unsafe { xp.as_ptr().add(index * NR) },
                        rows: plan.rows.as_ptr(),
                    };
                    // SAFETY: `product` holds co × cols floats, and each task writes its own
                    // panel's columns.
                    unsafe { panel_product((co, cols, k), index, &lhs, panel, out.get()) }
                };
                if parallel {
                    (0..cols / NR).into_par_iter().for_each(panel);
                } else {
                    (0..cols / NR).for_each(panel);
                }
                // The grid's real positions into [n, C_out, H_out, W_out], adding the bias.
                for (index, dst) in y.chunks_exact_mut(p).enumerate() {
                    let (image, m) = (index / co, index % co);
                    let row = &product[m * cols..][..cols];
                    for (oy, dst) in dst.chunks_exact_mut(g.width_out).enumerate() {
                        let at = (image * grid.image_rows + oy) * grid.width;
                        for (d, v) in dst.iter_mut().zip(&row[at..][..g.width_out]) {
                            d.write(bias.map_or(*v, |b| v + b[m]));
                        }
                    }
                }
            })
    })
}

#[cfg(test)]
mod tests {
    use super::super::wasm_gemm::tests::values;
    use super::*;
    use std::mem::MaybeUninit;

    /// What the forward pass computes without this kernel on wasm: im2col rows into
    /// `wasm_gemm`, then the bias, image by image.
    fn im2col_product(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (co, p, k) = (g.channels_out, g.p(), g.k());
        let mut y = Vec::new();
        for x in x.chunks_exact(g.plane()) {
            let mut dst = vec![MaybeUninit::new(f32::NAN); co * p];
            let row = |r: usize, row: &mut [f32]| super::super::im2col::im2col_row(g, x, r, row);
            super::super::wasm_gemm::matmul((co, p, k), &mut dst, w, row, false);
            for (index, v) in dst.iter().enumerate() {
                // SAFETY: `matmul` wrote every element.
                let v = unsafe { v.assume_init() };
                y.push(bias.map_or(v, |b| v + b[index / p]));
            }
        }
        y
    }

    #[test]
    fn equals_im2col_and_the_wasm_product_bit_for_bit() {
        use burn::tensor::ops::ConvOptions;
        // The U-Net's padded 3×3 at 28×28 (one image: its panels shared among threads) and
        // 7×7 (images stacked in groups, a short last group), a depth of 288 (two depth
        // blocks), output channels that are not a multiple of MR, no padding, asymmetric
        // padding with a 2×3 kernel, and no bias.
        let cases = [
            ([1, 4, 28, 28], [8, 4, 3, 3], [(1, 1), (1, 1)], true),
            ([7, 6, 7, 7], [5, 6, 3, 3], [(1, 1), (1, 1)], true),
            ([3, 32, 7, 7], [7, 32, 3, 3], [(1, 1), (1, 1)], true),
            ([3, 5, 9, 8], [4, 5, 3, 3], [(0, 0), (0, 0)], true),
            ([2, 3, 6, 9], [7, 3, 2, 3], [(1, 0), (2, 1)], false),
        ];
        // One thread (no parallel path), two, and eight (several groups, each with its panels
        // shared among threads): the grouping follows the thread count.
        let pools = [1, 2, 8].map(|n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("a thread pool")
        });
        for ((x_shape, w_shape, padding, with_bias), pool) in cases
            .into_iter()
            .flat_map(|c| pools.iter().map(move |p| (c, p)))
        {
            pool.install(|| {
                let options = ConvOptions::new_with_padding([1, 1], padding, [1, 1], 1);
                let g = Geometry::new(&x_shape, &w_shape, &options).expect("a plain convolution");
                let plan = Plan::new(&g).expect("stride 1");
                let x = values(x_shape.iter().product(), 7);
                let w = values(w_shape.iter().product(), 8);
                let bias = values(w_shape[0], 9);
                let bias = with_bias.then_some(&bias[..]);
                let got = forward(&plan, &x, &w, bias);
                let want = im2col_product(&g, &x, &w, bias);
                assert_eq!(got.len(), want.len());
                let threads = rayon::current_num_threads();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{x_shape:?} ⋆ {w_shape:?} on {threads} threads [{i}]"
                    );
                }
            });
        }
    }

    #[test]
    fn only_stride_one_kernels_larger_than_one_by_one() {
        use burn::tensor::ops::ConvOptions;
        let plan = |w_shape: [usize; 4], stride| {
            let options = ConvOptions::new_with_padding(stride, [(1, 1), (1, 1)], [1, 1], 1);
            let g = Geometry::new(&[1, 4, 8, 8], &w_shape, &options).unwrap();
            Plan::new(&g).is_some()
        };
        assert!(plan([4, 4, 3, 3], [1, 1]));
        assert!(!plan([4, 4, 3, 3], [2, 2]));
        assert!(!plan([4, 4, 1, 1], [1, 1]));
    }
}
