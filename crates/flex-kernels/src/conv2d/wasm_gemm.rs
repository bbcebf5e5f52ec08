//! The forward im2col product on WebAssembly with relaxed SIMD: `Y[m × n] = W[m × k] · X[k × n]`
//! with fused multiply-adds.
//!
//! The `gemm` crate's `simd128` kernels multiply and then add (two instructions per 4 lanes, no
//! FMA in baseline SIMD128), which caps them at half the core's FMA rate; relaxed SIMD's
//! `f32x4.relaxed_madd` is one `vfmadd` where the CPU has FMA. The kernel is the classic
//! register-blocked product (Goto & van de Geijn, 2008, "Anatomy of High-Performance Matrix
//! Multiplication"): both operands are packed — `W` into blocks of [`MR`] rows laid out
//! `[k][MR]`, `X` into panels of [`NR`] columns laid out `[k][NR]`, zero-padded at the edges —
//! and an `MR × NR` block of `Y` stays in registers over a depth block of [`KC`]. `3 × 12`: nine
//! accumulators, three panel vectors and one broadcast fit V8's 15 allocatable XMM registers
//! (`4 × 12` needs more, and measured slower).
//!
//! Every element is one chain of multiply-adds over the depth in order `0..k` (a depth block
//! resumes from the value stored by the previous one), whatever `n` and wherever the column
//! lies in its panel, so an image's output is the same alone as beside others in a batch.
//!
//! Only a wasm build with the `wasm-relaxed-simd` feature runs it. The functions that use relaxed
//! SIMD carry `#[target_feature]` rather than the whole build `+relaxed-simd`, so code that
//! selects a relaxed path by `cfg` (Burn's SIMD crate `macerator`, whose relaxed backend does
//! not compile with the current nightly) keeps its baseline one; LLVM still marks the module
//! with the feature. A browser without relaxed SIMD cannot compile such a module at all, so
//! that bundle is loaded only where relaxed SIMD validates (`web/worker.js`). Natively the
//! module compiles with 4-lane arrays in place of `v128`, so its packing, edges and order are
//! tested by `cargo test`.

use super::scratch::Shared;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows of `W` (output channels) per register block.
pub(super) const MR: usize = 3;
/// Vectors of 4 columns per register block.
const NV: usize = 3;
/// Columns of `X` per packed panel.
pub(super) const NR: usize = 4 * NV;
/// Depth per block: a panel's `KC × NR` floats (12 KiB) stay in L1 across the row blocks.
const KC: usize = 256;

/// Where the micro-kernel reads the `NR` values of each depth step of a column panel: a packed
/// panel here, or the zero-padded grid of the direct convolution (`super::wasm_direct`).
pub(super) trait Panel: Copy {
    /// The `NR` values of depth step `p`.
    ///
    /// # Safety
    /// `p` must be a depth step of the panel.
    unsafe fn row(self, p: usize) -> *const f32;
    /// The panel from depth step `k0` on.
    ///
    /// # Safety
    /// As for [`Panel::row`].
    unsafe fn from(self, k0: usize) -> Self;
}

/// A packed panel, `[k][NR]`.
#[derive(Clone, Copy)]
struct Packed(*const f32);

impl Panel for Packed {
    #[inline(always)]
    unsafe fn row(self, p: usize) -> *const f32 {
        self.0.add(p * NR)
    }

    #[inline(always)]
    unsafe fn from(self, k0: usize) -> Self {
        Self(self.0.add(k0 * NR))
    }
}

#[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
mod lanes {
    use core::arch::wasm32::*;

    pub type V = v128;

    /// Four floats from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p + 4` must be readable.
    #[inline]
    #[target_feature(enable = "simd128")]
    pub unsafe fn load(p: *const f32) -> V {
        v128_load(p.cast())
    }

    /// # Safety
    /// `p..p + 4` must be writable.
    #[inline]
    #[target_feature(enable = "simd128")]
    pub unsafe fn store(p: *mut f32, v: V) {
        v128_store(p.cast(), v)
    }

    #[inline]
    #[target_feature(enable = "simd128")]
    pub fn splat(x: f32) -> V {
        f32x4_splat(x)
    }

    /// `a · b + c`, fused where the CPU has FMA.
    #[inline]
    #[target_feature(enable = "simd128,relaxed-simd")]
    pub fn madd(a: V, b: V, c: V) -> V {
        f32x4_relaxed_madd(a, b, c)
    }
}

#[cfg(not(all(target_arch = "wasm32", feature = "wasm-relaxed-simd")))]
mod lanes {
    pub type V = [f32; 4];

    /// # Safety
    /// `p..p + 4` must be readable.
    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> V {
        p.cast::<V>().read_unaligned()
    }

    /// # Safety
    /// `p..p + 4` must be writable.
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V) {
        p.cast::<V>().write_unaligned(v)
    }

    #[inline(always)]
    pub fn splat(x: f32) -> V {
        [x; 4]
    }

    #[inline(always)]
    pub fn madd(a: V, b: V, c: V) -> V {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
}

use lanes::{load, madd, splat, store, V};

thread_local! {
    /// The packed operands and one row of `rhs`, kept per thread across calls (neither
    /// allocated nor zeroed per product).
    static PACKED: std::cell::Cell<[Vec<f32>; 3]> = std::cell::Cell::default();
}

/// `dst[m × n] = lhs[m × k] · rhs[k × n]`, row-major, where `rhs_row(p, row)` writes row `p` of
/// `rhs` (`n` values) into `row`: the im2col matrix is built a row at a time straight into the
/// packed panels, never stored whole. `dst` is only written (it may be uninitialised). With
/// `parallel`, the column panels are shared among the threads.
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    lhs: &[f32],
    rhs_row: impl FnMut(usize, &mut [f32]),
    parallel: bool,
) {
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k,
        "matmul: operand too small"
    );
    if k == 0 {
        dst[..m * n].fill(MaybeUninit::new(0.0));
        return;
    }
    let [mut packed_lhs, mut packed_rhs, mut row] = PACKED.take();
    pack_lhs(m, k, lhs, &mut packed_lhs);
    pack_rhs(k, n, rhs_row, &mut row, &mut packed_rhs);
    let out = Shared(dst.as_mut_ptr().cast());
    let (a, b) = (&packed_lhs[..], &packed_rhs[..]);
    let panel = |index: usize| {
        // SAFETY: the panel's columns lie inside `dst` (checked above) and no other task
        // writes them.
        unsafe {
            let panel = &b[index * k * NR..][..k * NR];
            panel_product((m, n, k), index, a, Packed(panel.as_ptr()), out.get())
        }
    };
    let panels = n.div_ceil(NR);
    if parallel {
        (0..panels).into_par_iter().for_each(panel);
    } else {
        (0..panels).for_each(panel);
    }
    PACKED.set([packed_lhs, packed_rhs, row]);
}

/// `lhs` (`[m × k]`) as blocks of `MR` rows, each `[k][MR]`; rows past `m` are zeros.
pub(super) fn pack_lhs(m: usize, k: usize, lhs: &[f32], packed: &mut Vec<f32>) {
    packed.resize(m.div_ceil(MR) * k * MR, 0.0);
    for (block, dst) in packed.chunks_exact_mut(k * MR).enumerate() {
        let rows: [Option<&[f32]>; MR] = std::array::from_fn(|r| {
            (block * MR + r < m).then(|| &lhs[(block * MR + r) * k..][..k])
        });
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            for (d, row) in d.iter_mut().zip(&rows) {
                *d = row.map_or(0.0, |row| row[p]);
            }
        }
    }
}

/// `rhs` (`[k × n]`, row `p` written by `rhs_row` into the scratch `row`) as panels of `NR`
/// columns, each `[k][NR]`; columns past `n` are zeros. Full panels move as fixed-size blocks
/// (vector copies, not a `memcpy` call per 48 bytes).
fn pack_rhs(
    k: usize,
    n: usize,
    mut rhs_row: impl FnMut(usize, &mut [f32]),
    row: &mut Vec<f32>,
    packed: &mut Vec<f32>,
) {
    let (full, panels) = (n / NR, n.div_ceil(NR));
    packed.resize(panels * k * NR, 0.0);
    row.resize(n, 0.0);
    for p in 0..k {
        rhs_row(p, row);
        let (blocks, rest) = row.split_at(full * NR);
        for (index, block) in blocks.chunks_exact(NR).enumerate() {
            let dst: &mut [f32; NR] = (&mut packed[(index * k + p) * NR..][..NR])
                .try_into()
                .expect("NR floats");
            *dst = block.try_into().expect("NR floats");
        }
        if !rest.is_empty() {
            let dst = &mut packed[(full * k + p) * NR..][..NR];
            dst[..rest.len()].copy_from_slice(rest);
            dst[rest.len()..].fill(0.0);
        }
    }
}

/// Columns `index · NR ..` of the product, from the packed `lhs` and this panel of `rhs`.
///
/// # Safety
/// `dst` must point at `m × n` writable floats that no other thread touches in those columns;
/// `panel` must hold `k` depth steps.
#[cfg_attr(
    all(target_arch = "wasm32", feature = "wasm-relaxed-simd"),
    target_feature(enable = "simd128,relaxed-simd")
)]
pub(super) unsafe fn panel_product(
    (m, n, k): (usize, usize, usize),
    index: usize,
    lhs: &[f32],
    panel: impl Panel,
    dst: *mut f32,
) {
    let (c0, width) = (index * NR, NR.min(n - index * NR));
    // Edge blocks (fewer than MR rows or NR columns) go through a full block on the stack.
    let mut tile = [0.0f32; MR * NR];
    for k0 in (0..k).step_by(KC) {
        let depth = KC.min(k - k0);
        let first = k0 == 0;
        let b = panel.from(k0);
        for block in 0..m.div_ceil(MR) {
            let (r0, height) = (block * MR, MR.min(m - block * MR));
            let a = lhs[(block * k + k0) * MR..].as_ptr();
            let corner = dst.add(r0 * n + c0);
            if height == MR && width == NR {
                block_product(depth, a, b, corner, n, first);
                continue;
            }
            for r in 0..height {
                for j in 0..width {
                    tile[r * NR + j] = if first { 0.0 } else { *corner.add(r * n + j) };
                }
            }
            block_product(depth, a, b, tile.as_mut_ptr(), NR, first);
            for r in 0..height {
                for j in 0..width {
                    *corner.add(r * n + j) = tile[r * NR + j];
                }
            }
        }
    }
}

/// `C[MR × NR] (+)= A · B` over `depth`: `a` is `[depth][MR]`, `b` gives `NR` values per
/// step, `c` has row stride `ldc`; without `first` the block continues the sums already in `c`.
///
/// # Safety
/// `a`, `b` must hold `depth` steps and `c` an `MR × NR` block at stride `ldc`.
#[cfg_attr(
    all(target_arch = "wasm32", feature = "wasm-relaxed-simd"),
    target_feature(enable = "simd128,relaxed-simd")
)]
#[inline]
unsafe fn block_product(
    depth: usize,
    a: *const f32,
    b: impl Panel,
    c: *mut f32,
    ldc: usize,
    first: bool,
) {
    let mut acc = [[splat(0.0); NV]; MR];
    if !first {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = load(c.add(r * ldc + 4 * v));
            }
        }
    }
    for p in 0..depth {
        let row = b.row(p);
        let mut x: [V; NV] = [splat(0.0); NV];
        for (v, x) in x.iter_mut().enumerate() {
            *x = load(row.add(4 * v));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let w = splat(*a.add(p * MR + r));
            for (acc, &x) in row.iter_mut().zip(&x) {
                *acc = madd(w, x, *acc);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            store(c.add(r * ldc + 4 * v), x);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `len` values in [−0.5, 0.5) from a linear congruential generator seeded with `seed`.
    pub(in super::super) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / 16_777_216.0 - 0.5
            })
            .collect()
    }

    fn product(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], parallel: bool) -> Vec<f32> {
        let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
        let row = |p: usize, row: &mut [f32]| row.copy_from_slice(&rhs[p * n..][..n]);
        matmul((m, n, k), &mut dst, lhs, row, parallel);
        dst.iter().map(|x| unsafe { x.assume_init() }).collect()
    }

    #[test]
    fn equals_the_definition_at_edge_sizes() {
        // Rows and columns that are and are not multiples of MR and NR, depths across KC.
        for (m, n, k) in [
            (3, 12, 1),
            (1, 1, 7),
            (5, 13, 300),
            (64, 49, 576),
            (7, 100, 513),
        ] {
            let (lhs, rhs) = (values(m * k, 1), values(k * n, 2));
            for parallel in [false, true] {
                let y = product(m, n, k, &lhs, &rhs, parallel);
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|p| f64::from(lhs[i * k + p]) * f64::from(rhs[p * n + j]))
                            .sum();
                        let tolerance = 1e-6 * k as f64;
                        assert!(
                            (f64::from(y[i * n + j]) - exact).abs() <= tolerance,
                            "({m}, {n}, {k}) [{i}, {j}]: {} vs {exact}",
                            y[i * n + j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_convolution_product_equals_im2col_and_gemm() {
        use super::super::gemm::{matmul_batch_invariant, Mat};
        use super::super::geometry::Geometry;
        use super::super::im2col::{im2col, im2col_row};
        use burn::tensor::ops::ConvOptions;
        // Padded 3×3 at 7×7 (two images), strided 3×3, a 1×1, and asymmetric padding: the rows
        // the forward pass hands over are im2col's, whatever the geometry.
        let cases = [
            ([2, 5, 7, 7], [9, 5, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([1, 4, 8, 8], [6, 4, 3, 3], [2, 2], [(1, 1), (1, 1)]),
            ([3, 7, 5, 5], [4, 7, 1, 1], [1, 1], [(0, 0), (0, 0)]),
            ([1, 3, 6, 9], [5, 3, 2, 3], [1, 2], [(1, 0), (2, 1)]),
        ];
        for (x_shape, w_shape, stride, padding) in cases {
            let options = ConvOptions::new_with_padding(stride, padding, [1, 1], 1);
            let g = Geometry::new(&x_shape, &w_shape, &options).expect("a plain convolution");
            let x = values(x_shape.iter().product(), 5);
            let w = values(w_shape.iter().product(), 6);
            let (co, n, k) = (g.channels_out, g.batch * g.p(), g.k());
            let mut cols = vec![0.0; k * n];
            im2col(&g, &x, &mut cols);
            let mut want = vec![MaybeUninit::new(f32::NAN); co * n];
            let (lhs, rhs) = (Mat::row_major(&w, k), Mat::row_major(&cols, n));
            matmul_batch_invariant((co, n, k), &mut want, lhs, rhs, gemm::Parallelism::None);
            let mut got = vec![MaybeUninit::new(f32::NAN); co * n];
            let row = |r: usize, row: &mut [f32]| im2col_row(&g, &x, r, row);
            matmul((co, n, k), &mut got, &w, row, true);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let (a, b) = unsafe { (a.assume_init(), b.assume_init()) };
                assert!(
                    (a - b).abs() <= 1e-5,
                    "{x_shape:?} ⋆ {w_shape:?} [{i}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn a_column_does_not_depend_on_its_neighbours() {
        // One image's 49 columns alone, and the same columns at offset 49 among 3 images (a
        // different lane of a different panel): the same bits.
        let (m, k, p) = (10, 600, 49);
        let lhs = values(m * k, 3);
        let group = values(k * 3 * p, 4);
        let one: Vec<f32> = (0..k)
            .flat_map(|r| group[r * 3 * p + p..][..p].to_vec())
            .collect();
        let alone = product(m, p, k, &lhs, &one, false);
        let beside = product(m, 3 * p, k, &lhs, &group, true);
        for i in 0..m {
            assert_eq!(alone[i * p..][..p], beside[i * 3 * p + p..][..p], "row {i}");
        }
    }
}
