//! SiLU (swish), `x · σ(x)` (Elfwing et al., 2018; Ramachandran et al., 2017), with a fused
//! kernel for f32 tensors on the Flex CPU backend.
//!
//! Burn composes SiLU as `x * sigmoid(x)`: on Flex that is a scalar libm `expf` per element
//! plus a multiply, and under autodiff two more nodes whose backward passes take four more
//! passes over memory. Here the forward is one pass with a vectorisable `exp`, and the backward
//! one more: `d/dx [x σ(x)] = σ(x) (1 + x (1 − σ(x)))`. Other backends use Burn's `silu`.

use burn::tensor::{activation, Tensor};

/// SiLU, `x · σ(x)`, element-wise.
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let x = match flex::try_silu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    activation::silu(x)
}

#[cfg(feature = "flex")]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use super::kernels;
    use crate::flex_tensor::{on_autodiff, plain, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor, TensorData};

    /// Runs the fused kernel for f32 Flex tensors (plain or under autodiff); hands `x` back
    /// otherwise.
    pub(super) fn try_silu<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        if let Some(p) = plain(&x) {
            return Ok(Tensor::from_primitive::<Flex>(forward(&p)));
        }
        on_autodiff!(x => |C| super::autodiff::try_silu::<C, D>(x))
    }

    /// SiLU of a Flex tensor.
    pub(super) fn forward(x: &FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let shape = x.layout().shape().clone();
        FlexTensor::from_data(TensorData::new(kernels::forward(values(&x)), shape))
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use super::kernels;
    use crate::flex_tensor::values;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::{Tensor, TensorData};

    /// Backward step of SiLU; the state is the checkpointed input.
    #[derive(Debug)]
    struct SiluBackward;

    impl Backward<Flex, 1> for SiluBackward {
        type State = NodeId;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let [Some(parent)] = ops.parents else { return };
            let x = checkpointer
                .retrieve_node_output::<FlexTensor>(ops.state)
                .to_contiguous();
            let shape = x.layout().shape().clone();
            let dx = kernels::backward(values(&x), values(&grad));
            grads.register::<Flex>(parent.id, FlexTensor::from_data(TensorData::new(dx, shape)));
        }
    }

    /// SiLU as one autodiff node on `Autodiff<Flex, C>`; hands `x` back if it is elsewhere.
    pub(super) fn try_silu<C: CheckpointStrategy, const D: usize>(
        x: Tensor<D>,
    ) -> Result<Tensor<D>, Tensor<D>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let Ok(x_ad) = x.clone().try_into_primitive::<Autodiff<Flex, C>>() else {
            return Err(x);
        };
        let y = super::flex::forward(x_ad.primitive());
        let output = match SiluBackward
            .prepare::<C>([x_ad.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x_ad);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }
}

#[cfg(feature = "flex")]
pub(crate) mod kernels;

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use crate::{calls, Kernel, Pass};
    use burn::tensor::{Device, Distribution};

    #[test]
    fn forward_matches_burn_silu_including_extremes() {
        let device = Device::flex();
        let x = Tensor::<2>::random([37, 1001], Distribution::Normal(0.0, 4.0), &device);
        let extremes = Tensor::<2>::from_floats(
            [[-200.0, -90.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 90.0, 200.0]],
            &device,
        );
        for x in [x, extremes] {
            let before = calls(Kernel::Silu, Pass::Forward);
            let ours = silu(x.clone());
            assert!(
                calls(Kernel::Silu, Pass::Forward) > before,
                "the fused path did not run"
            );
            let err = relative_error(ours, activation::silu(x));
            assert!(err < 1e-6, "relative error {err}");
        }
        // Non-contiguous input (a transpose) gives the same values.
        let x = Tensor::<2>::random([8, 5], Distribution::Normal(0.0, 2.0), &device);
        let err = relative_error(silu(x.clone().transpose()), activation::silu(x).transpose());
        assert!(err < 1e-6, "transposed: relative error {err}");
    }

    #[test]
    fn gradient_matches_burn_silu_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([4, 33, 17], Distribution::Normal(0.0, 3.0), &device);
        let r = Tensor::<3>::random([4, 33, 17], Distribution::Normal(0.0, 1.0), &device);
        let grad = |fast: bool| {
            let x = x.clone().require_grad();
            let y = if fast {
                silu(x.clone())
            } else {
                activation::silu(x.clone())
            };
            let grads = (y * r.clone()).sum().backward();
            x.grad(&grads).expect("x grad")
        };
        let before = calls(Kernel::Silu, Pass::Backward);
        let fast = grad(true);
        assert!(
            calls(Kernel::Silu, Pass::Backward) > before,
            "the fused backward did not run"
        );
        let err = relative_error(fast, grad(false));
        assert!(err < 1e-5, "relative error {err}");
    }
}
