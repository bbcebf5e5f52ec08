//! Dropout (Srivastava et al., 2014) for f32 tensors on the Flex CPU backend, as one parallel
//! pass and one autodiff node.
//!
//! Burn's `Dropout` draws a Bernoulli tensor element by element from a host RNG and then
//! multiplies twice (by the mask, then by `1/keep`), single-threaded on Flex, forward and
//! backward. Here the mask is a counter-based hash of
//! (seed, element index): `y = x · mask` is computed in one parallel, vectorised pass, and the
//! backward pass `∂L/∂x = ∂L/∂y · mask` recomputes the same mask from the seed instead of
//! keeping it. The seed is drawn from the device's RNG, so a seeded device still gives
//! reproducible masks. Other backends use Burn's `Dropout::forward`.

use burn::nn::Dropout;
use burn::tensor::Tensor;

/// [`Dropout::forward`], fused on Flex: the identity unless the layer is in training mode on
/// an autodiff device with a non-zero probability.
///
/// # Shapes
/// - `input`: any shape; the output has the same shape.
pub fn dropout<const D: usize>(dropout: &Dropout, input: Tensor<D>) -> Tensor<D> {
    #[cfg(all(feature = "flex", feature = "autodiff"))]
    let input =
        if dropout.training.is_enabled() && input.device().is_autodiff() && dropout.prob > 0.0 {
            match autodiff::try_dropout(input, dropout.prob) {
                Ok(y) => return y,
                Err(input) => input,
            }
        } else {
            input
        };
    dropout.forward(input)
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the input back for Burn's own op (the routine fallback, not an error); boxing it
// to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use crate::flex_tensor::{on_autodiff, tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::{DType, Device, Distribution, Tensor, TensorData};

    /// The mask's parameters: keep probability and seed.
    #[derive(Clone, Copy, Debug)]
    struct Mask {
        keep: f64,
        seed: [u32; 2],
    }

    /// Backward step of dropout: `∂L/∂x = ∂L/∂y · mask`, the mask recomputed from its seed.
    #[derive(Debug)]
    struct DropoutBackward;

    impl Backward<Flex, 1> for DropoutBackward {
        type State = Mask;

        fn backward(self, ops: Ops<Mask, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let [parent] = ops.parents;
            if let Some(node) = parent {
                let Mask { keep, seed } = ops.state;
                let dx = super::kernels::apply(values(&grad), keep, seed);
                let shape = grad.layout().shape().clone();
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
            }
        }
    }

    /// `x · mask` as one autodiff node on Flex (either checkpointing strategy); the input back
    /// for other backends and dtypes.
    pub(super) fn try_dropout<const D: usize>(
        x: Tensor<D>,
        prob: f64,
    ) -> Result<Tensor<D>, Tensor<D>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        on_autodiff!(x => |C| try_with::<C, D>(x, prob))
    }

    fn try_with<C: CheckpointStrategy, const D: usize>(
        x: Tensor<D>,
        prob: f64,
    ) -> Result<Tensor<D>, Tensor<D>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let Ok(x_ad) = x.clone().try_into_primitive::<Autodiff<Flex, C>>() else {
            return Err(x);
        };
        // Two uniform draws from the device's RNG seed the hash.
        let Ok(draws) = Tensor::<1>::random([2], Distribution::Uniform(0.0, 1.0), &Device::flex())
            .into_data()
            .try_to_vec::<f32>()
        else {
            return Err(x);
        };
        let mask = Mask {
            keep: 1.0 - prob,
            seed: [draws[0].to_bits(), draws[1].to_bits()],
        };
        let input = x_ad.primitive().to_contiguous();
        let dims: [usize; D] = x.dims();
        let y = tensor(
            super::kernels::apply(values(&input), mask.keep, mask.seed),
            dims,
        );
        let prep = DropoutBackward
            .prepare::<C>([x_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(prep) => prep.finish(mask, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
mod kernels;

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::{calls, Kernel, Pass};
    use burn::nn::DropoutConfig;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn drops_and_scales_during_training_only() {
        let device = Device::flex().autodiff();
        let dropout = DropoutConfig::new(0.25).init();
        let x =
            Tensor::<2>::random([64, 512], Distribution::Uniform(1.0, 2.0), &device).require_grad();
        let before = calls(Kernel::Dropout, Pass::Forward);
        let y = super::dropout(&dropout, x.clone());
        assert!(
            calls(Kernel::Dropout, Pass::Forward) > before,
            "the fused dropout did not run"
        );
        let kept = y
            .clone()
            .not_equal_elem(0.0)
            .float()
            .mean()
            .into_scalar::<f32>();
        assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");
        // Kept values are x / 0.75, and the gradient is the mask.
        let ratio = (y.clone() / x.clone()).mask_fill(y.clone().equal_elem(0.0), 1.0 / 0.75);
        assert!((ratio - 1.0 / 0.75).abs().max().into_scalar::<f32>() < 1e-5);
        let grads = y.clone().sum().backward();
        // Forward and backward: two passes of the kernel.
        assert!(calls(Kernel::Dropout, Pass::Forward) >= before + 2);
        let dx = x
            .grad(&grads)
            .expect("x grad")
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = (y.detach() / x.detach())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(dx.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-5));
        // NaN and infinities stay visible where dropped (x·0, as in Burn), not zeroed.
        let bad =
            Tensor::<1>::from_floats([f32::NAN, f32::INFINITY].repeat(64).as_slice(), &device);
        let y = super::dropout(&dropout, bad)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(y.iter().all(|v| v.is_nan() || *v == f32::INFINITY), "{y:?}");
        // Evaluation mode and plain devices pass the input through.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        assert_eq!(
            super::dropout(&dropout, plain.clone()).into_data(),
            plain.into_data()
        );
    }
}
