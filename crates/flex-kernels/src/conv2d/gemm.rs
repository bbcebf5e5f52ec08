//! The matrix products of the im2col path, on the `gemm` crate (Flex's own, with its AVX-512
//! kernels where the CPU has them).
//!
//! The forward products split the depth themselves ([`matmul_batch_invariant`]): `gemm` picks its
//! depth block from the whole shape (512 when m and n are both ≤ 64, otherwise from the cache
//! sizes), and a sum split differently rounds differently. A one-image product at 7 × 7
//! (n = 49) and a grouped one (n = 98 …) took different blocks for k = 576 and 1152, so an image's
//! output depended on how many shared its batch (by up to 6e-7).

use std::mem::MaybeUninit;

/// A read-only matrix operand: element (row, col) at `data[row · rs + col · cs]`.
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with rows of `row_len` elements.
    pub(super) fn row_major(data: &'a [f32], row_len: usize) -> Self {
        Self {
            data,
            rs: row_len,
            cs: 1,
        }
    }
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, `dst` row-major with row stride `n`.
/// Without `accumulate`, `dst` is only written (it may be uninitialised).
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallelism: gemm::Parallelism,
) {
    let last = |rows: usize, cols: usize, a: &Mat| (rows - 1) * a.rs + (cols - 1) * a.cs;
    assert!(dst.len() >= m * n, "matmul: destination too small");
    assert!(
        last(m, k, &lhs) < lhs.data.len(),
        "matmul: lhs out of bounds"
    );
    assert!(
        last(k, n, &rhs) < rhs.data.len(),
        "matmul: rhs out of bounds"
    );
    // SAFETY: every index the product touches is bounds-checked above; dst is exclusive.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The most depth one `gemm` call gets in [`matmul_batch_invariant`]: `gemm` never splits a
/// depth of at most 512, whatever m and n.
const DEPTH_BLOCK: usize = 512;

/// [`matmul`] without `accumulate`, with the depth cut into equal blocks of at most
/// [`DEPTH_BLOCK`] by this function, so that every element is summed in the same blocks, in the
/// same order, for every m and n: one image's columns get the same bits alone as beside others.
pub(super) fn matmul_batch_invariant(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    lhs: Mat,
    rhs: Mat,
    parallelism: gemm::Parallelism,
) {
    let blocks = k.div_ceil(DEPTH_BLOCK).max(1);
    let depth = k.div_ceil(blocks);
    for start in (0..k.max(1)).step_by(depth.max(1)) {
        let d = depth.min(k - start);
        let l = Mat {
            data: &lhs.data[start * lhs.cs..],
            ..lhs
        };
        let r = Mat {
            data: &rhs.data[start * rhs.rs..],
            ..rhs
        };
        matmul((m, n, d), dst, start > 0, l, r, parallelism);
    }
}
