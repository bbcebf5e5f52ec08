//! What the CPU kernels ([`crate::conv2d`], [`crate::group_norm`], [`crate::silu`],
//! [`crate::dropout`]) share: moving f32 data in and out of Flex tensors, the AVX-512 check, and
//! for tests, call counters and the comparison with Burn's ops.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// The elements of a contiguous f32 tensor.
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// Wraps a row-major buffer as a Flex tensor.
pub(crate) fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// A vector of `len` floats that `write` fills completely, handed over as `MaybeUninit` so the
/// memory is not zeroed first only to be overwritten (a `memset` per tensor operation).
///
/// `write` must store every element; the kernels that use this write each output once.
pub(crate) fn written(
    len: usize,
    write: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    write(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `write` initialised all `len` elements (the contract above), and the capacity
    // is at least `len`.
    unsafe { v.set_len(len) };
    v
}

/// Whether the CPU has AVX-512F, for the kernels compiled a second time with it enabled
/// (`std` caches the CPUID answer).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// How often a kernel's forward (0) and backward (1) ran, so tests can check that the fast
/// path was taken rather than Burn's fallback.
#[cfg(test)]
pub(crate) struct Calls([std::sync::atomic::AtomicUsize; 2]);

#[cfg(test)]
impl Calls {
    pub(crate) const fn new() -> Self {
        Self([
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        ])
    }

    pub(crate) fn hit(&self, which: usize) {
        self.0[which].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn get(&self, which: usize) -> usize {
        self.0[which].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Max |a − b| relative to max |b| (tests comparing a kernel with Burn's op).
#[cfg(test)]
pub(crate) fn relative_error<const D: usize>(
    a: burn::tensor::Tensor<D>,
    b: burn::tensor::Tensor<D>,
) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>().max(1e-6);
    (a - b).abs().max().into_scalar::<f32>() / scale
}
