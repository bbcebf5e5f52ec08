//! The matrix products of the im2col path, on the `gemm` crate (Flex's own, with its AVX-512
//! kernels where the CPU has them).

use std::mem::MaybeUninit;

/// A read-only matrix operand: element (row, col) at `data[row · rs + col · cs]`.
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
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
