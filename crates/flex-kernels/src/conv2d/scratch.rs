//! Per-thread working state: scratch buffers that the im2col blocks and the direct kernels'
//! padded copies reuse across calls (neither allocated nor zeroed per image group), the pointer
//! through which parallel tasks write one output, and the sum that reduces per-thread partial
//! gradients.

use std::mem::MaybeUninit;

/// A pointer to one call's output that its parallel tasks share, each writing disjoint elements
/// through it (the direct kernel's image groups, the wasm product's column panels).
#[derive(Clone, Copy)]
pub(super) struct Shared(pub(super) *mut f32);
// SAFETY: only used to write disjoint output elements from the tasks of one call.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

/// An initialised buffer viewed as one the product may overwrite.
pub(super) fn uninit(buffer: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; the callee only stores initialised f32 values into it.
    unsafe { &mut *(buffer as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

thread_local! {
    static SCRATCH: std::cell::Cell<[Vec<f32>; 3]> = std::cell::Cell::default();
}

/// Three scratch buffers kept per thread across calls, so the im2col blocks (and the
/// direct kernels' padded buffers) are neither allocated nor zeroed per image group. A
/// nested user on the same thread (a task stolen while gemm waits) finds none and allocates
/// its own.
pub(super) struct Scratch(pub(super) [Vec<f32>; 3]);

impl Scratch {
    pub(super) fn take() -> Self {
        Self(SCRATCH.try_with(|s| s.take()).unwrap_or_default())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffers = std::mem::take(&mut self.0);
        let _ = SCRATCH.try_with(|s| s.set(buffers));
    }
}

/// `len` elements of a scratch buffer starting at a 64-byte boundary, growing it if needed
/// (stale contents). On a cache line, the direct kernels' lanes (multiples of 16 floats)
/// keep their aligned loads on one line.
pub(super) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len + 16 {
        buffer.resize(len + 16, 0.0);
    }
    let skip = buffer.as_ptr().align_offset(64).min(16);
    &mut buffer[skip..skip + len]
}

/// What [`sized`] last handed out of `buffer`, and beyond (from the same boundary).
#[cfg(feature = "autodiff")]
pub(super) fn aligned(buffer: &[f32]) -> &[f32] {
    &buffer[buffer.as_ptr().align_offset(64).min(16)..]
}

/// Element-wise sum of two partial results (an empty one is zero).
#[cfg(feature = "autodiff")]
pub(super) fn add<T: Copy + core::ops::AddAssign>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
    if a.is_empty() {
        return b;
    }
    for (a, b) in a.iter_mut().zip(&b) {
        *a += *b;
    }
    a
}
