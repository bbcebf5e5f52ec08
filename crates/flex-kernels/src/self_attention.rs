//! Scaled dot-product self-attention over the pixels of a feature map (Vaswani et al., 2017,
//! eq. 1: `softmax(QKᵀ/√d)·V`, per head), read straight from the NCHW output of the block's
//! 1×1 `qkv` convolution, with a parallel kernel for f32 tensors on Flex.
//!
//! Burn's route is a reshape and two `swap_dims` (each a single-threaded strided copy on
//! Flex), its attention, and a copy back to NCHW; in a sampling step of the `mnist` U-Net the
//! copies ran on one core while the other waited. Here each (image, head) is one task whose
//! loops all run along the query pixels i, contiguous in NCHW: the transposed scores
//! `sᵀ[j, i] = Σ_e k[e, j]·q[e, i] / √d` as sums of rows of Q, the softmax over j (less its
//! maximum), and `out[e, i] = Σ_j v[e, j]·p[j, i]` as sums of rows of P, written in NCHW.
//! Under autodiff it is one node whose backward recomputes P and applies
//! `∂L/∂V = ∂L/∂O·Pᵀ`, `∂L/∂P = Vᵀ·∂L/∂O`, `∂L/∂S = P ⊙ (∂L/∂P − Σ_j P ⊙ ∂L/∂P)`,
//! `∂L/∂Q = K·∂L/∂S / √d`, `∂L/∂K = Q·∂L/∂Sᵀ / √d`.
//! For maps larger than 8×8 and on other backends it is Burn's own attention.
//!
//! Half-precision (bf16, f16) inputs are attended in f32 and the result rounded back: the
//! scores' softmax needs more than bf16's 8 significant bits.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType, Tensor};

/// Self-attention of the `num_heads` heads in `qkv`, whose channels are Q, then K, then V
/// (each `C` channels, head `h` being channels `h·d..(h + 1)·d` of each, `d = C / num_heads`).
///
/// # Shapes
/// - `qkv`: `[batch, 3·C, height, width]`
/// - output: `[batch, C, height, width]`, channel `h·d + e` = component `e` of head `h`.
pub fn self_attention(qkv: Tensor<4>, num_heads: usize) -> Tensor<4> {
    let dtype = qkv.dtype();
    if matches!(dtype, DType::BF16 | DType::F16) {
        return self_attention(qkv.cast(FloatDType::F32), num_heads).cast(FloatDType::from(dtype));
    }
    #[cfg(feature = "flex")]
    let qkv = match flex::try_attention(qkv, num_heads) {
        Ok(y) => return y,
        Err(qkv) => qkv,
    };
    burn_attention(qkv, num_heads)
}

/// [`self_attention`] through Burn's own attention (and the reshapes to its layout).
fn burn_attention(qkv: Tensor<4>, num_heads: usize) -> Tensor<4> {
    let [b, c3, h, w] = qkv.dims();
    let (c, n) = (c3 / 3, h * w);
    let d = c / num_heads;
    let qkv = qkv.reshape([b * 3, num_heads, d, n]).swap_dims(2, 3);
    let mut parts = qkv.reshape([b, 3, num_heads, n, d]).chunk(3, 1).into_iter();
    let mut next = || parts.next().expect("q, k, v").reshape([b, num_heads, n, d]);
    let (q, k, v) = (next(), next(), next());
    let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
    out.swap_dims(2, 3).reshape([b, c, h, w])
}

#[cfg(feature = "flex")]
// `Err` hands the input back for Burn's own op (the routine fallback, not an error); boxing it
// to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use crate::flex_tensor::{dims, on_autodiff, plain, tensor, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor};

    /// Largest feature map (in pixels) the fused kernel takes.
    pub(super) const MAX_PIXELS: usize = 64;

    /// The fused kernel (one autodiff node under autodiff) for f32 tensors on Flex and maps of
    /// up to [`MAX_PIXELS`] pixels; hands `qkv` back otherwise.
    pub(super) fn try_attention(qkv: Tensor<4>, heads: usize) -> Result<Tensor<4>, Tensor<4>> {
        let [b, c3, h, w] = qkv.dims();
        let fits = c3 % 3 == 0 && heads > 0 && (c3 / 3) % heads == 0 && b * c3 * h * w > 0;
        // Past small maps (the `mnist` U-Net's 7×7) Burn's route, whose products go through
        // gemm, is faster (docs/kernels.md).
        let fits = fits && h * w <= MAX_PIXELS;
        if qkv.dtype() != DType::F32 || !fits {
            return Err(qkv);
        }
        if let Some(p) = plain(&qkv) {
            return Ok(Tensor::from_primitive::<Flex>(forward(&p, heads)));
        }
        on_autodiff!(qkv => |C| super::autodiff::try_attention::<C>(qkv, heads))
    }

    /// The attention of a `[b, 3c, h, w]` Flex tensor: `[b, c, h, w]`.
    pub(super) fn forward(qkv: &FlexTensor, heads: usize) -> FlexTensor {
        let qkv = qkv.to_contiguous();
        let [b, c3, h, w] = dims(&qkv);
        let y = super::kernels::attention(values(&qkv), [b, c3 / 3, h * w], heads);
        tensor(y, [b, c3 / 3, h, w])
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the input back for Burn's own op (the routine fallback, not an error); boxing it
// to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use crate::flex_tensor::{dims, tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::Tensor;

    /// Backward step of the attention; the state is the checkpointed qkv and the heads.
    #[derive(Debug)]
    struct AttentionBackward;

    impl Backward<Flex, 1> for AttentionBackward {
        type State = (NodeId, usize);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (qkv_id, heads) = ops.state;
            let [parent] = ops.parents;
            if let Some(node) = parent {
                let qkv = checkpointer
                    .retrieve_node_output::<FlexTensor>(qkv_id)
                    .to_contiguous();
                let [b, c3, h, w] = dims(&qkv);
                let dqkv = super::kernels::attention_backward(
                    values(&qkv),
                    values(&grad),
                    [b, c3 / 3, h * w],
                    heads,
                );
                grads.register::<Flex>(node.id, tensor(dqkv, [b, c3, h, w]));
            }
        }
    }

    pub(super) fn try_attention<C: CheckpointStrategy>(
        qkv: Tensor<4>,
        heads: usize,
    ) -> Result<Tensor<4>, Tensor<4>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let Ok(qkv_ad) = qkv.clone().try_into_primitive::<Autodiff<Flex, C>>() else {
            return Err(qkv);
        };
        let y = super::flex::forward(qkv_ad.primitive(), heads);
        let prep = AttentionBackward
            .prepare::<C>([qkv_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&qkv_ad);
                prep.finish((state, heads), y)
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

    /// (batch, channels, height, width, heads): the `mnist` U-Net's 7×7, several heads, a
    /// rectangular map with pixels not a multiple of 16, one pixel.
    const CASES: [(usize, usize, usize, usize, usize); 4] = [
        (3, 64, 7, 7, 1),
        (2, 24, 3, 5, 2),
        (2, 32, 6, 6, 4),
        (1, 8, 1, 1, 1),
    ];

    #[test]
    fn fused_attention_matches_burn() {
        let device = Device::flex();
        for (b, c, h, w, heads) in CASES {
            let qkv =
                Tensor::<4>::random([b, 3 * c, h, w], Distribution::Normal(0.0, 1.5), &device);
            let before = calls(Kernel::SelfAttention, Pass::Forward);
            let ours = self_attention(qkv.clone(), heads);
            assert!(
                calls(Kernel::SelfAttention, Pass::Forward) > before,
                "the fused path did not run"
            );
            assert_eq!(ours.dims(), [b, c, h, w]);
            let err = relative_error(ours, burn_attention(qkv, heads));
            assert!(
                err < 1e-5,
                "{b}×{c}×{h}×{w}, {heads} heads: relative error {err}"
            );
        }
    }

    #[test]
    fn half_inputs_are_attended_in_f32_and_rounded_back() {
        let device = Device::flex().autodiff();
        let qkv = Tensor::<4>::random([2, 3 * 32, 6, 6], Distribution::Normal(0.0, 3.0), &device)
            .cast(FloatDType::BF16)
            .require_grad();
        let before = calls(Kernel::SelfAttention, Pass::Forward);
        let y = self_attention(qkv.clone(), 4);
        assert_eq!(y.dtype(), DType::BF16);
        // The fused kernel takes f32 only: the count proves the f32 computation.
        assert!(calls(Kernel::SelfAttention, Pass::Forward) > before);
        let exact = burn_attention(qkv.clone().cast(FloatDType::F32), 4);
        let err = relative_error(y.clone().cast(FloatDType::F32), exact);
        // One rounding to bf16 (unit roundoff 2⁻⁹ relative).
        assert!(err < 4e-3, "relative error {err}");
        let grads = y.cast(FloatDType::F32).sum().backward();
        assert_eq!(qkv.grad(&grads).expect("qkv grad").dtype(), DType::BF16);
    }

    #[test]
    fn fused_attention_gradients_match_burn() {
        let device = Device::flex().autodiff();
        for (b, c, h, w, heads) in CASES {
            let qkv =
                Tensor::<4>::random([b, 3 * c, h, w], Distribution::Normal(0.0, 1.5), &device);
            let r = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let grad = |fused: bool| {
                let x = qkv.clone().require_grad();
                let y = if fused {
                    self_attention(x.clone(), heads)
                } else {
                    burn_attention(x.clone(), heads)
                };
                let grads = (y * r.clone()).sum().backward();
                x.grad(&grads).expect("qkv grad")
            };
            let before = calls(Kernel::SelfAttention, Pass::Backward);
            let ours = grad(true);
            assert!(
                calls(Kernel::SelfAttention, Pass::Backward) > before,
                "the fused backward did not run"
            );
            let err = relative_error(ours, grad(false));
            assert!(
                err < 1e-4,
                "{b}×{c}×{h}×{w}, {heads} heads: relative error {err}"
            );
        }
    }
}
