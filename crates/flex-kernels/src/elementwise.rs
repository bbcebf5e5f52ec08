//! The U-Net's element-wise steps — the residual sum, FiLM (`x·(1 + s) + t` with a per-image,
//! per-channel scale and shift) and the channel concatenation of skip connections — with
//! parallel kernels for f32 tensors on the Flex CPU backend.
//!
//! Burn's Flex backend runs these as single-threaded loops (FiLM as a broadcast multiply and a
//! broadcast add: two passes) while the other cores wait. Here each is one parallel pass, and one autodiff node whose backward is
//! `∂L/∂a = ∂L/∂b = ∂L/∂y` for the sum and, for FiLM,
//! `∂L/∂x = ∂L/∂y·(1 + s)`, `∂L/∂s = Σ_hw ∂L/∂y·x`, `∂L/∂t = Σ_hw ∂L/∂y`, and for the
//! concatenation the two channel ranges of ∂L/∂y.
//! Other backends and dtypes use Burn's own operations.

use burn::tensor::Tensor;

/// `a + b` for tensors of the same shape.
///
/// # Shapes
/// - `a`, `b`: `[batch, channels, height, width]`; the output has the same shape.
pub fn add(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (a, b) = match flex::try_add(a, b) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    a + b
}

/// `Tensor::cat([a, b], 1)`: the channels of `a`, then those of `b` (the U-Net's skip
/// connections).
///
/// # Shapes
/// - `a`: `[batch, channels_a, height, width]`, `b`: `[batch, channels_b, height, width]`
/// - output: `[batch, channels_a + channels_b, height, width]`
pub fn cat_channels(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (a, b) = match flex::try_cat(a, b) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    Tensor::cat(vec![a, b], 1)
}

/// FiLM (Perez et al., 2018): `x·(1 + scale) + shift`, one scale and shift per image and channel.
///
/// # Shapes
/// - `x`: `[batch, channels, height, width]`; the output has the same shape.
/// - `scale`, `shift`: `[batch, channels, 1, 1]`
pub fn film(x: Tensor<4>, scale: Tensor<4>, shift: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (x, scale, shift) = match flex::try_film(x, scale, shift, false) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    x * scale.add_scalar(1.0) + shift
}

/// `silu(x·(1 + scale) + shift)`: [`film`] followed by SiLU, in one pass over memory.
///
/// # Shapes
/// - `x`: `[batch, channels, height, width]`; the output has the same shape.
/// - `scale`, `shift`: `[batch, channels, 1, 1]`
pub fn film_silu(x: Tensor<4>, scale: Tensor<4>, shift: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (x, scale, shift) = match flex::try_film(x, scale, shift, true) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    crate::silu::silu(x * scale.add_scalar(1.0) + shift)
}

#[cfg(feature = "flex")]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use super::kernels;
    use crate::flex_tensor::{dims, on_autodiff, plain, tensor, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor};

    /// Two same-shaped inputs, handed back when the kernel does not apply.
    pub(super) type Pair = (Tensor<4>, Tensor<4>);
    /// The inputs of FiLM, handed back when the kernel does not apply.
    pub(super) type FilmInputs = (Tensor<4>, Tensor<4>, Tensor<4>);

    pub(super) fn try_add(a: Tensor<4>, b: Tensor<4>) -> Result<Tensor<4>, Pair> {
        if a.dtype() != DType::F32 || b.dtype() != DType::F32 || a.dims() != b.dims() {
            return Err((a, b));
        }
        if let (Some(ap), Some(bp)) = (plain(&a), plain(&b)) {
            return Ok(Tensor::from_primitive::<Flex>(add(&ap, &bp)));
        }
        let inputs = (a, b);
        on_autodiff!(inputs => |C| super::autodiff::try_add::<C>(inputs))
    }

    pub(super) fn try_cat(a: Tensor<4>, b: Tensor<4>) -> Result<Tensor<4>, Pair> {
        let ([n, _, h, w], [n2, _, h2, w2]) = (a.dims(), b.dims());
        let empty = a.dims().iter().chain(&b.dims()).any(|&d| d == 0);
        if a.dtype() != DType::F32 || b.dtype() != DType::F32 || [n, h, w] != [n2, h2, w2] || empty
        {
            return Err((a, b));
        }
        if let (Some(ap), Some(bp)) = (plain(&a), plain(&b)) {
            return Ok(Tensor::from_primitive::<Flex>(cat(&ap, &bp)));
        }
        let inputs = (a, b);
        on_autodiff!(inputs => |C| super::autodiff::try_cat::<C>(inputs))
    }

    /// The channels of `a`, then those of `b`.
    pub(super) fn cat(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        let [n, ca, h, w] = dims(&a);
        let cb = b.layout().shape()[1];
        let y = kernels::cat(values(&a), values(&b), n);
        tensor(y, [n, ca + cb, h, w])
    }

    /// FiLM, followed by SiLU if `silu`.
    pub(super) fn try_film(
        x: Tensor<4>,
        scale: Tensor<4>,
        shift: Tensor<4>,
        silu: bool,
    ) -> Result<Tensor<4>, FilmInputs> {
        let [b, c, _, _] = x.dims();
        let fits = [x.dtype(), scale.dtype(), shift.dtype()]
            .iter()
            .all(|&d| d == DType::F32)
            && scale.dims() == [b, c, 1, 1]
            && shift.dims() == [b, c, 1, 1]
            && !x.dims().contains(&0);
        if !fits {
            return Err((x, scale, shift));
        }
        if let (Some(xp), Some(sp), Some(tp)) = (plain(&x), plain(&scale), plain(&shift)) {
            return Ok(Tensor::from_primitive::<Flex>(film(&xp, &sp, &tp, silu)));
        }
        let inputs = (x, scale, shift);
        on_autodiff!(inputs => |C| super::autodiff::try_film::<C>(inputs, silu))
    }

    /// `a + b` of two Flex tensors of one shape.
    pub(super) fn add(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
        let (a, b) = (a.to_contiguous(), b.to_contiguous());
        tensor(kernels::add(values(&a), values(&b)), dims::<4>(&a))
    }

    /// FiLM of Flex tensors, followed by SiLU if `silu`.
    pub(super) fn film(
        x: &FlexTensor,
        scale: &FlexTensor,
        shift: &FlexTensor,
        silu: bool,
    ) -> FlexTensor {
        let (x, scale, shift) = (
            x.to_contiguous(),
            scale.to_contiguous(),
            shift.to_contiguous(),
        );
        let y = kernels::film(values(&x), values(&scale), values(&shift), silu);
        tensor(y, dims::<4>(&x))
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use super::flex::{FilmInputs, Pair};
    use super::kernels;
    use crate::flex_tensor::{dims, tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::Tensor;

    /// Backward step of `a + b`: the output gradient goes to both.
    #[derive(Debug)]
    struct AddBackward;

    impl Backward<Flex, 2> for AddBackward {
        type State = ();

        fn backward(self, ops: Ops<(), 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<Flex>(&ops.node);
            let [a, b] = ops.parents;
            match (a, b) {
                (Some(a), Some(b)) => {
                    grads.register::<Flex>(a.id, grad.clone());
                    grads.register::<Flex>(b.id, grad);
                }
                (Some(node), None) | (None, Some(node)) => grads.register::<Flex>(node.id, grad),
                (None, None) => {}
            }
        }
    }

    pub(super) fn try_add<C: CheckpointStrategy>((a, b): Pair) -> Result<Tensor<4>, Pair>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            a.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            b.clone().try_into_primitive::<Autodiff<Flex, C>>(),
        );
        let (Ok(a_ad), Ok(b_ad)) = converted else {
            return Err((a, b));
        };
        let y = super::flex::add(a_ad.primitive(), b_ad.primitive());
        let output = AddBackward
            .prepare::<C>([a_ad.node(), b_ad.node()])
            .compute_bound()
            .stateless(y);
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }

    /// Backward step of the channel concatenation: the two channel ranges of the gradient; the
    /// state is (channels of a, shape of the output).
    #[derive(Debug)]
    struct CatBackward;

    impl Backward<Flex, 2> for CatBackward {
        type State = (usize, [usize; 4]);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (ca, [n, c, h, w]) = ops.state;
            let (da, db) = kernels::split(values(&grad), n, ca * h * w);
            let [a, b] = ops.parents;
            if let Some(node) = a {
                grads.register::<Flex>(node.id, tensor(da, [n, ca, h, w]));
            }
            if let Some(node) = b {
                grads.register::<Flex>(node.id, tensor(db, [n, c - ca, h, w]));
            }
        }
    }

    pub(super) fn try_cat<C: CheckpointStrategy>((a, b): Pair) -> Result<Tensor<4>, Pair>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            a.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            b.clone().try_into_primitive::<Autodiff<Flex, C>>(),
        );
        let (Ok(a_ad), Ok(b_ad)) = converted else {
            return Err((a, b));
        };
        let ca = a.dims()[1];
        let y = super::flex::cat(a_ad.primitive(), b_ad.primitive());
        let shape = dims(&y);
        let prep = CatBackward
            .prepare::<C>([a_ad.node(), b_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(prep) => prep.finish((ca, shape), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }

    /// Backward step of FiLM (and SiLU if the forward applied it); parents are
    /// (x, scale, shift).
    #[derive(Debug)]
    struct FilmBackward;

    /// The checkpointed x, scale and (with SiLU, which needs it) shift.
    type State = (NodeId, NodeId, Option<NodeId>);

    impl Backward<Flex, 3> for FilmBackward {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_id, scale_id, shift_id) = ops.state;
            let mut retrieve = |id| {
                checkpointer
                    .retrieve_node_output::<FlexTensor>(id)
                    .to_contiguous()
            };
            let (x, scale) = (retrieve(x_id), retrieve(scale_id));
            let shift = shift_id.map(&mut retrieve);
            let silu = shift.as_ref().map(values);
            let shape = dims::<4>(&x);
            let [node_x, node_scale, node_shift] = ops.parents;
            let (dx, dscale, dshift) = kernels::film_backward(
                values(&x),
                values(&scale),
                silu,
                values(&grad),
                node_x.is_some(),
            );
            let planes = [shape[0], shape[1], 1, 1];
            if let (Some(node), Some(dx)) = (node_x, dx) {
                grads.register::<Flex>(node.id, tensor(dx, shape));
            }
            if let Some(node) = node_scale {
                grads.register::<Flex>(node.id, tensor(dscale, planes));
            }
            if let Some(node) = node_shift {
                grads.register::<Flex>(node.id, tensor(dshift, planes));
            }
        }
    }

    pub(super) fn try_film<C: CheckpointStrategy>(
        (x, scale, shift): FilmInputs,
        silu: bool,
    ) -> Result<Tensor<4>, FilmInputs>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            x.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            scale.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            shift.clone().try_into_primitive::<Autodiff<Flex, C>>(),
        );
        let (Ok(x_ad), Ok(s_ad), Ok(t_ad)) = converted else {
            return Err((x, scale, shift));
        };
        let y = super::flex::film(x_ad.primitive(), s_ad.primitive(), t_ad.primitive(), silu);
        let prep = FilmBackward
            .prepare::<C>([x_ad.node(), s_ad.node(), t_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(mut prep) => {
                let (x, s) = (prep.checkpoint(&x_ad), prep.checkpoint(&s_ad));
                let state = (x, s, silu.then(|| prep.checkpoint(&t_ad)));
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }
}

#[cfg(feature = "flex")]
mod kernels;

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use crate::{calls, Kernel, Pass};
    use burn::tensor::{Device, Distribution};

    #[test]
    fn add_and_film_match_burn_on_flex() {
        let device = Device::flex();
        let x = Tensor::<4>::random([3, 5, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let h = Tensor::<4>::random([3, 5, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let e = Tensor::<4>::random([3, 10, 1, 1], Distribution::Normal(0.0, 1.0), &device);
        // Narrowed halves, as the ResBlock passes them (not contiguous).
        let (s, t) = (e.clone().narrow(1, 0, 5), e.narrow(1, 5, 5));
        let other = Tensor::<4>::random([3, 2, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let before = calls(Kernel::Elementwise, Pass::Forward);
        let sum = add(x.clone(), h.clone());
        let filmed = film(x.clone(), s.clone(), t.clone());
        let joined = cat_channels(x.clone(), other.clone());
        assert!(
            calls(Kernel::Elementwise, Pass::Forward) >= before + 3,
            "the kernels did not run"
        );
        assert_eq!(joined.dims(), [3, 7, 7, 6]);
        let reference = Tensor::cat(vec![x.clone(), other], 1);
        assert_eq!(joined.into_data(), reference.into_data());
        assert!(relative_error(sum, x.clone() + h) < 1e-6);
        let fused = film_silu(x.clone(), s.clone(), t.clone());
        let reference = x.clone() * s.clone().add_scalar(1.0) + t.clone();
        let fused_err = relative_error(fused, burn::tensor::activation::silu(reference));
        assert!(fused_err < 1e-6, "film_silu: relative error {fused_err}");
        assert!(relative_error(filmed, x * s.add_scalar(1.0) + t) < 1e-6);
    }

    #[test]
    fn gradients_match_burn_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([2, 4, 9, 5], Distribution::Normal(0.0, 1.0), &device);
        let h = Tensor::<4>::random([2, 4, 9, 5], Distribution::Normal(0.0, 1.0), &device);
        let e = Tensor::<4>::random([2, 8, 1, 1], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<4>::random([2, 4, 9, 5], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let (x, h, e) = (
                x.clone().require_grad(),
                h.clone().require_grad(),
                e.clone().require_grad(),
            );
            let (s, t) = (e.clone().narrow(1, 0, 4), e.clone().narrow(1, 4, 4));
            // A concatenation of the two halves of x's channels feeds FiLM.
            let (x1, x2) = (x.clone().narrow(1, 0, 1), x.clone().narrow(1, 1, 3));
            let y = if fast {
                add(film(cat_channels(x1, x2), s, t), h.clone())
            } else {
                Tensor::cat(vec![x1, x2], 1) * s.add_scalar(1.0) + t + h.clone()
            };
            let grads = (y * r.clone()).sum().backward();
            [x.grad(&grads), h.grad(&grads), e.grad(&grads)].map(|g| g.expect("gradient"))
        };
        let before = calls(Kernel::Elementwise, Pass::Backward);
        let ours = run(true);
        assert!(
            calls(Kernel::Elementwise, Pass::Backward) >= before + 2,
            "the FiLM and concatenation backwards did not run"
        );
        let reference = run(false);
        for (name, (a, b)) in ["x", "h", "e"].iter().zip(ours.into_iter().zip(reference)) {
            let err = relative_error(a, b);
            assert!(err < 1e-5, "d{name}: relative error {err}");
        }
    }

    #[test]
    fn film_silu_gradients_match_burn_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        // Values well into both tails of SiLU.
        let x = Tensor::<4>::random([2, 3, 6, 7], Distribution::Normal(0.0, 4.0), &device);
        let e = Tensor::<4>::random([2, 6, 1, 1], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<4>::random([2, 3, 6, 7], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let (x, e) = (x.clone().require_grad(), e.clone().require_grad());
            let (s, t) = (e.clone().narrow(1, 0, 3), e.clone().narrow(1, 3, 3));
            let y = if fast {
                film_silu(x.clone(), s, t)
            } else {
                burn::tensor::activation::silu(x.clone() * s.add_scalar(1.0) + t)
            };
            let grads = (y * r.clone()).sum().backward();
            [x.grad(&grads), e.grad(&grads)].map(|g| g.expect("gradient"))
        };
        let before = calls(Kernel::Elementwise, Pass::Backward);
        let ours = run(true);
        assert!(
            calls(Kernel::Elementwise, Pass::Backward) > before,
            "the fused backward did not run"
        );
        let reference = run(false);
        for (name, (a, b)) in ["x", "e"].iter().zip(ours.into_iter().zip(reference)) {
            let err = relative_error(a, b);
            assert!(err < 1e-5, "d{name}: relative error {err}");
        }
    }
}
