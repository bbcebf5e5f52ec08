//! Moving f32 data in and out of Flex tensors, for the CPU kernels in [`crate::conv2d`] and
//! [`crate::silu`].

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// The tensor in row-major order (a copy only if it is not already contiguous).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

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
