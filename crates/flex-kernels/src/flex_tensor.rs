//! What the kernels share: the two ways into the fast path — a plain Flex primitive ([`plain`])
//! or an autodiff node on Flex ([`on_autodiff`]), both closed inside
//! [`with_burn_ops`](crate::with_burn_ops) — moving f32 data in and out of Flex tensors, the
//! AVX-512 check, and for tests, the comparison with Burn's ops.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};

/// The Flex primitive of `t` if it lives on a plain (not autodiff) Flex device. Autodiff
/// devices are not tried: a failed conversion formats an error message.
pub(crate) fn plain<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if !crate::fast_path::enabled() || t.device().is_autodiff() {
        return None;
    }
    t.clone().try_into_primitive::<Flex>().ok()
}

/// Runs `$call` — a kernel's autodiff node on `Autodiff<Flex, $c>`, which hands its inputs back
/// as `Err` when they are not on that backend — for each checkpointing strategy a Flex autodiff
/// device can have: `NoCheckpointing`, then, with the inputs handed back as `$inputs`,
/// `BalancedCheckpointing`. Returns `Ok` from the calling function on the first success;
/// otherwise evaluates to the last `Err` (to `Err($inputs)` without the `autodiff` feature, or
/// inside [`with_burn_ops`](crate::with_burn_ops)).
macro_rules! on_autodiff {
    ($inputs:ident => |$c:ident| $call:expr) => {{
        #[cfg(feature = "autodiff")]
        let result = if !$crate::fast_path::enabled() {
            Err($inputs)
        } else {
            let $inputs = {
                type $c = burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
                match $call {
                    Ok(y) => return Ok(y),
                    Err(inputs) => inputs,
                }
            };
            type $c = burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
            $call
        };
        #[cfg(not(feature = "autodiff"))]
        let result = Err($inputs);
        result
    }};
}
pub(crate) use on_autodiff;

/// The shape of a rank-`D` Flex tensor.
pub(crate) fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    t.layout().shape().to_vec().try_into().expect("tensor rank")
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

/// Whether the CPU has AVX-512F, for the kernels compiled a second time with it enabled
/// (`std` caches the CPUID answer).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
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
