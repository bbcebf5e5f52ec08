//! Group normalisation (Wu & He, 2018) with a fused kernel for f32 tensors on the Flex CPU
//! backend.
//!
//! Burn composes GroupNorm from about ten tensor operations (mean, subtract, square, mean,
//! add, sqrt, divide, multiply, add), each a pass over memory and, under autodiff, a backward
//! node of its own. Here the forward is two passes per group (statistics, then
//! `y = x·a_c + b_c` with `a_c = γ_c/σ`, `b_c = β_c − μ·a_c`), and the backward two more, from
//! the standard result for x̂ = (x − μ)/σ over a group of n values:
//!
//! `∂L/∂x = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))` with `g = γ_c·∂L/∂y`,
//! `∂L/∂γ_c = Σ ∂L/∂y·x̂`, `∂L/∂β_c = Σ ∂L/∂y`.
//!
//! With a SiLU after the norm ([`group_norm_silu`]) the SiLU is applied in the write pass, and the
//! backward pass first turns ∂L/∂(silu(z)) into ∂L/∂z = ∂L/∂y·σ(z)·(1 + z·(1 − σ(z))), z
//! recomputed from x and the statistics (one node, no stored z).
//!
//! The variance is the biased one with ε inside the square root, as in Burn and PyTorch.
//! Non-affine norms, other dtypes and other backends use Burn's `GroupNorm::forward`.
//!
//! Half-precision (bf16, f16) inputs are normalised in f32 and the result rounded back, as
//! under PyTorch's autocast, which runs `group_norm` in f32: bf16 keeps 8 significant bits,
//! too few for x − μ and its square (Burn widens only f16's statistics, not bf16's).

use burn::module::Param;
use burn::nn::GroupNorm;
use burn::tensor::{DType, FloatDType, Tensor};

/// [`GroupNorm::forward`], fused on Flex.
///
/// # Shapes
/// - `input`: `[batch, num_channels, ...]`; the output has the same shape.
pub fn group_norm<const D: usize>(norm: &GroupNorm, input: Tensor<D>) -> Tensor<D> {
    fused(norm, input, false)
}

/// `silu(norm.forward(input))`, fused on Flex: the SiLU is applied as the normalised values
/// are written (one pass over memory fewer), and under autodiff it is one node.
///
/// # Shapes
/// - `input`: `[batch, num_channels, ...]`; the output has the same shape.
pub fn group_norm_silu<const D: usize>(norm: &GroupNorm, input: Tensor<D>) -> Tensor<D> {
    fused(norm, input, true)
}

/// GroupNorm, then SiLU if `silu`: the fused kernels where they apply, Burn's ops otherwise.
fn fused<const D: usize>(norm: &GroupNorm, input: Tensor<D>, silu: bool) -> Tensor<D> {
    let dtype = input.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        // The casts are autodiff nodes: gradients reach the half-precision input (and γ, β
        // where they are half too; under `UNet::autocast` they stay f32 and pass unchanged).
        let mut norm = norm.clone();
        let to_f32 = |p: Option<Param<Tensor<1>>>| p.map(|p| p.map(|t| t.cast(FloatDType::F32)));
        (norm.gamma, norm.beta) = (to_f32(norm.gamma), to_f32(norm.beta));
        return fused(&norm, input.cast(FloatDType::F32), silu).cast(FloatDType::from(dtype));
    }
    #[cfg(feature = "flex")]
    let input = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => {
            match kernels::Geometry::new(&input.dims(), norm.num_groups, norm.epsilon) {
                Some(g) => match flex::try_group_norm(g, (input, gamma.val(), beta.val()), silu) {
                    Ok(y) => return y,
                    Err((input, _, _)) => input,
                },
                None => input,
            }
        }
        _ => input,
    };
    let y = norm.forward(input);
    if silu {
        crate::silu::silu(y)
    } else {
        y
    }
}

#[cfg(feature = "flex")]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use super::kernels::{self, Geometry};
    use crate::flex_tensor::{on_autodiff, plain, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor, TensorData};

    /// The inputs (x, γ, β), handed back when the fused path does not apply.
    pub(super) type Inputs<const D: usize> = (Tensor<D>, Tensor<1>, Tensor<1>);

    /// GroupNorm (then SiLU if `silu`) of f32 tensors on Flex, plain or autodiff; hands the
    /// inputs back otherwise.
    pub(super) fn try_group_norm<const D: usize>(
        g: Geometry,
        (x, gamma, beta): Inputs<D>,
        silu: bool,
    ) -> Result<Tensor<D>, Inputs<D>> {
        let f32_only = [x.dtype(), gamma.dtype(), beta.dtype()]
            .iter()
            .all(|&d| d == DType::F32);
        if !f32_only {
            return Err((x, gamma, beta));
        }
        if let (Some(xp), Some(gp), Some(bp)) = (plain(&x), plain(&gamma), plain(&beta)) {
            let (y, _) = forward(&g, &xp, &gp, &bp, silu);
            return Ok(Tensor::from_primitive::<Flex>(y));
        }
        let inputs = (x, gamma, beta);
        on_autodiff!(inputs => |C| super::autodiff::try_group_norm::<C, D>(g, inputs, silu))
    }

    /// The normalised tensor (through SiLU if `silu`) and the (mean, 1/σ) of every (image,
    /// group).
    pub(super) fn forward(
        g: &Geometry,
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: &FlexTensor,
        silu: bool,
    ) -> (FlexTensor, Vec<[f32; 2]>) {
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let shape = x.layout().shape().clone();
        let (y, stats) = kernels::forward(g, values(&x), values(&gamma), values(&beta), silu);
        (FlexTensor::from_data(TensorData::new(y, shape)), stats)
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use super::flex::Inputs;
    use super::kernels::{self, Geometry};
    use crate::flex_tensor::{tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::{Tensor, TensorData};

    /// Backward step of GroupNorm (and the SiLU after it if the flag is set); parents are
    /// (x, γ, β).
    #[derive(Debug)]
    struct GroupNormBackward;

    /// The checkpointed x, γ and (with SiLU) β, the statistics of the forward pass and the
    /// geometry.
    type State = (NodeId, NodeId, Option<NodeId>, Vec<[f32; 2]>, Geometry);

    impl Backward<Flex, 3> for GroupNormBackward {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_id, gamma_id, beta_id, stats, g) = ops.state;
            let mut retrieve = |id| {
                checkpointer
                    .retrieve_node_output::<FlexTensor>(id)
                    .to_contiguous()
            };
            let (x, gamma) = (retrieve(x_id), retrieve(gamma_id));
            let beta = beta_id.map(&mut retrieve);
            let shape = x.layout().shape().clone();
            let (dx, dgamma, dbeta) = kernels::backward(
                &g,
                values(&x),
                (values(&gamma), beta.as_ref().map(values)),
                values(&grad),
                &stats,
            );
            let [node_x, node_gamma, node_beta] = ops.parents;
            if let Some(node) = node_x {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
            }
            if let Some(node) = node_gamma {
                grads.register::<Flex>(node.id, tensor(dgamma, [g.channels]));
            }
            if let Some(node) = node_beta {
                grads.register::<Flex>(node.id, tensor(dbeta, [g.channels]));
            }
        }
    }

    /// GroupNorm (then SiLU if `silu`) as one autodiff node on `Autodiff<Flex, C>`; hands the
    /// inputs back if they are not all on that backend.
    pub(super) fn try_group_norm<C: CheckpointStrategy, const D: usize>(
        g: Geometry,
        (x, gamma, beta): Inputs<D>,
        silu: bool,
    ) -> Result<Tensor<D>, Inputs<D>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            x.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            gamma.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            beta.clone().try_into_primitive::<Autodiff<Flex, C>>(),
        );
        let (Ok(x_ad), Ok(g_ad), Ok(b_ad)) = converted else {
            return Err((x, gamma, beta));
        };
        let (y, stats) = super::flex::forward(
            &g,
            x_ad.primitive(),
            g_ad.primitive(),
            b_ad.primitive(),
            silu,
        );
        let prep = GroupNormBackward
            .prepare::<C>([x_ad.node(), g_ad.node(), b_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(mut prep) => {
                let (x_state, g_state) = (prep.checkpoint(&x_ad), prep.checkpoint(&g_ad));
                let b_state = silu.then(|| prep.checkpoint(&b_ad));
                prep.finish((x_state, g_state, b_state, stats, g), y)
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
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Device, Distribution};

    /// A GroupNorm with random γ and β on `device`.
    fn norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
        let mut norm = GroupNormConfig::new(groups, channels)
            .with_epsilon(1e-5)
            .init(device);
        let random = || Tensor::<1>::random([channels], Distribution::Normal(0.5, 1.0), device);
        norm.gamma = Some(Param::from_tensor(random()));
        norm.beta = Some(Param::from_tensor(random()));
        norm
    }

    #[test]
    fn forward_matches_burn_group_norm() {
        let device = Device::flex();
        for (shape, groups) in [([3, 8, 5, 7], 4), ([2, 6, 1, 1], 3), ([4, 32, 14, 14], 32)] {
            let norm = norm(groups, shape[1], &device);
            // An offset mean and spread, as after a convolution.
            let x = Tensor::<4>::random(shape, Distribution::Normal(3.0, 2.0), &device);
            let before = calls(Kernel::GroupNorm, Pass::Forward);
            let ours = group_norm(&norm, x.clone());
            assert!(
                calls(Kernel::GroupNorm, Pass::Forward) > before,
                "the fused path did not run"
            );
            // Within float rounding of Burn's statistics, whose variance loses digits to
            // cancellation when a group is small and its mean large (here 2 values around 3:
            // up to ~1e-5 relative, varying with the unseeded inputs); a wrong formula is off
            // by O(1).
            let err = relative_error(ours, norm.forward(x));
            assert!(err < 1e-4, "{shape:?}/{groups}: relative error {err}");
        }
    }

    #[test]
    fn forward_silu_matches_burn_group_norm_then_silu() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let norm = norm(4, 8, &device);
            let x = Tensor::<4>::random([3, 8, 5, 7], Distribution::Normal(3.0, 2.0), &device);
            let before = calls(Kernel::GroupNorm, Pass::Forward);
            let ours = group_norm_silu(&norm, x.clone());
            assert!(
                calls(Kernel::GroupNorm, Pass::Forward) > before,
                "the fused path did not run"
            );
            let reference = burn::tensor::activation::silu(norm.forward(x));
            let err = relative_error(ours, reference);
            assert!(err < 1e-5, "{device:?}: relative error {err}");
        }
    }

    #[test]
    fn gradients_match_burn_group_norm_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        let cases = [([3, 8, 5, 7], 4, false), ([4, 16, 6, 6], 8, false)];
        // GroupNorm + SiLU as one node.
        let silu_cases = [([3, 8, 5, 7], 4, true), ([2, 32, 14, 14], 32, true)];
        for (shape, groups, silu) in cases.into_iter().chain(silu_cases) {
            let norm = norm(groups, shape[1], &device);
            let x = Tensor::<4>::random(shape, Distribution::Normal(3.0, 2.0), &device);
            let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |fast: bool| {
                let x = x.clone().require_grad();
                let y = match (fast, silu) {
                    (true, false) => group_norm(&norm, x.clone()),
                    (true, true) => group_norm_silu(&norm, x.clone()),
                    (false, false) => norm.forward(x.clone()),
                    (false, true) => burn::tensor::activation::silu(norm.forward(x.clone())),
                };
                let grads = (y * r.clone()).sum().backward();
                let gamma = norm.gamma.as_ref().unwrap().val();
                let beta = norm.beta.as_ref().unwrap().val();
                (
                    x.grad(&grads).expect("x grad"),
                    gamma.grad(&grads).expect("γ grad"),
                    beta.grad(&grads).expect("β grad"),
                )
            };
            let before = calls(Kernel::GroupNorm, Pass::Backward);
            let (dx, dg, db) = run(true);
            assert!(
                calls(Kernel::GroupNorm, Pass::Backward) > before,
                "the fused backward did not run"
            );
            let (rx, rg, rb) = run(false);
            let case = format!("{shape:?}/{groups}, SiLU {silu}");
            assert!(relative_error(dx, rx) < 1e-4, "{case}: dx");
            assert!(relative_error(dg, rg) < 1e-5, "{case}: dγ");
            assert!(relative_error(db, rb) < 1e-5, "{case}: dβ");
        }
    }

    #[test]
    fn half_inputs_are_normalised_in_f32_and_rounded_back() {
        let device = Device::flex().autodiff();
        let shape = [2, 16, 6, 6];
        // f32 γ and β, as `UNet::autocast` leaves them.
        let master = norm(4, 16, &device);
        // A large mean against the spread: x − μ in bf16 would keep few significant bits.
        let x = Tensor::<4>::random(shape, Distribution::Normal(24.0, 1.0), &device)
            .cast(FloatDType::BF16)
            .require_grad();
        let before = calls(Kernel::GroupNorm, Pass::Forward);
        let y = group_norm_silu(&master, x.clone());
        assert_eq!(y.dtype(), DType::BF16);
        assert!(
            calls(Kernel::GroupNorm, Pass::Forward) > before,
            "the f32 computation did not reach the fused kernel"
        );
        // Exact arithmetic on the same bf16 values, in f32 throughout.
        let exact = burn::tensor::activation::silu(master.forward(x.clone().cast(FloatDType::F32)));
        let err = relative_error(y.clone().cast(FloatDType::F32), exact);
        // One rounding to bf16 (unit roundoff 2⁻⁹ relative).
        assert!(err < 4e-3, "relative error {err}");
        let grads = y.cast(FloatDType::F32).sum().backward();
        let dx = x.grad(&grads).expect("the half input has a gradient");
        assert_eq!(dx.dtype(), DType::BF16);
        let dgamma = master.gamma.as_ref().unwrap().val().grad(&grads);
        assert_eq!(
            dgamma.expect("the f32 γ has a gradient").dtype(),
            DType::F32
        );
        // γ and β in bf16 too (a module cast whole, in the graph): widened the same way.
        let mut half = master.clone();
        let to_bf16 = |p: Option<Param<Tensor<1>>>| p.map(|p| p.map(|t| t.cast(FloatDType::BF16)));
        (half.gamma, half.beta) = (to_bf16(half.gamma), to_bf16(half.beta));
        let y = group_norm_silu(&half, x.clone());
        assert_eq!(y.dtype(), DType::BF16);
        let grads = y.cast(FloatDType::F32).sum().backward();
        let dgamma = master.gamma.as_ref().unwrap().val().grad(&grads);
        assert_eq!(dgamma.expect("γ has a gradient").dtype(), DType::F32);
    }
}
