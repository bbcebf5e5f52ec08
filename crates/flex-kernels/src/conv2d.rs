//! 2-D convolution for the U-Net, with a fast path for f32 tensors on the Flex CPU backend.
//!
//! Burn 0.22.1's Flex backend convolves 512-pixel tiles of one image at a time, and its backward
//! pass goes through Burn's generic fallbacks: the input gradient is a transposed convolution and
//! the weight gradient a convolution whose kernel is the whole output image, both run as direct
//! loops. For f32 tensors on Flex — plain, or under autodiff — [`conv2d`] instead lowers the
//! forward and both gradients to matrix products over the im2col matrix (Chellapilla et al.,
//! 2006, "High Performance Convolutional Neural Networks for Document Processing"), with
//! K = C_in·k_h·k_w, P = H_out·W_out and a group of N images (one image, or enough small ones
//! for ≥ 256 columns) per product:
//!
//! - forward       Y  = W · col(X)           `[C_out, K] × [K, N·P]`
//! - input grad    for stride 1, a convolution of dY with the flipped, transposed kernel
//!   (padding k − 1 − p); otherwise dX = col⁻¹(Wᵀ · dY), scatter-added back
//! - weight grad   dW = Σ_groups dY · col(X)ᵀ   `[C_out, N·P] × [N·P, K]`
//! - bias grad     db = Σ dY over images and pixels
//!
//! Groups run in parallel, each building its im2col block in a per-thread scratch buffer that
//! stays in cache; stride-1 taps are one shifted copy each. The products run on the `gemm` crate
//! (the same one Flex uses, with its AVX-512 kernels where the CPU has them), except the forward
//! on WebAssembly built with relaxed SIMD (feature `wasm-relaxed-simd`): there our own
//! fused-multiply-add kernel (`conv2d/wasm_gemm.rs`) runs it, twice the multiply-add rate of
//! `gemm`'s baseline SIMD128 kernels.
//!
//! On CPUs with AVX-512, stride-1 k×k convolutions where it measures faster (see
//! `direct::Plan::pays_off`: all of the `mnist` U-Net's 3×3 convolutions, `cifar10_ddpm`'s
//! at 32×32) skip the im2col matrix: the forward, the input gradient (a forward of the flipped
//! kernel) and the 3×3 weight gradient run on a direct kernel that reads a zero-padded copy of
//! the input in place (`conv2d/direct.rs`). Everything else —
//! other backends and dtypes, grouped convolutions, and tensors whose parts live on different
//! backends — goes to Burn's own `conv2d`, so the result never depends on which path ran beyond
//! float rounding.

use burn::nn::{conv::Conv2d, PaddingConfig2d};
use burn::tensor::{module, ops::ConvOptions, Tensor};

/// Burn's `module::conv2d` (same arguments), routed to the fast kernels for f32 tensors on Flex.
///
/// # Shapes
/// - `x`: `[batch, channels_in, height, width]`
/// - `weight`: `[channels_out, channels_in / groups, kernel_h, kernel_w]`
/// - `bias`: `[channels_out]`
/// - output: `[batch, channels_out, height_out, width_out]`
pub fn conv2d_op(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match flex::try_conv2d(x, weight, bias, &options) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    module::conv2d(x, weight, bias, options)
}

/// [`Conv2d::forward`] through [`conv2d_op`]: the same parameters and padding (`Same` padding,
/// which the U-Net does not use, goes to `Conv2d::forward` itself).
///
/// # Shapes
/// - `input`: `[batch, channels_in, height, width]`
/// - output: `[batch, channels_out, height_out, width_out]`
pub fn conv2d(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return conv.forward(input),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d_op(
        input,
        conv.weight.val(),
        conv.bias.as_ref().map(|bias| bias.val()),
        options,
    )
}

#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod direct;

#[cfg(feature = "flex")]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use super::geometry::Geometry;
    use crate::flex_tensor::{on_autodiff, plain, tensor, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{ops::ConvOptions, DType, Tensor};

    /// The inputs, handed back when the fast path does not apply.
    pub(super) type Inputs = (Tensor<4>, Tensor<4>, Option<Tensor<1>>);

    /// Runs the convolution on the im2col kernels when every input is an f32 Flex tensor
    /// (all plain, or all under the same autodiff strategy); hands the inputs back otherwise.
    pub(super) fn try_conv2d(
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: &ConvOptions<2>,
    ) -> Result<Tensor<4>, Inputs> {
        let f32_only = x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let geometry = Geometry::new(&x.dims(), &weight.dims(), options);
        let Some(geometry) = geometry.filter(|_| f32_only) else {
            return Err((x, weight, bias));
        };

        // Clones are reference-count bumps; the originals go back if a conversion fails.
        let bias_plain = match &bias {
            None => Some(None),
            Some(b) => plain(b).map(Some),
        };
        if let (Some(xp), Some(wp), Some(bp)) = (plain(&x), plain(&weight), bias_plain) {
            let y = forward(&geometry, &xp, &wp, bp.as_ref());
            return Ok(Tensor::from_primitive::<Flex>(y));
        }
        let inputs = (x, weight, bias);
        on_autodiff!(inputs => |C| {
            let (x, weight, bias) = inputs;
            super::autodiff::try_conv2d::<C>(geometry, x, weight, bias)
        })
    }

    /// The forward convolution of Flex tensors.
    pub(super) fn forward(
        g: &Geometry,
        x: &FlexTensor,
        weight: &FlexTensor,
        bias: Option<&FlexTensor>,
    ) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.map(FlexTensor::to_contiguous);
        let y = super::forward::forward(g, values(&x), values(&weight), bias.as_ref().map(values));
        tensor(y, g.output_shape())
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use super::flex::Inputs;
    use super::geometry::Geometry;
    use crate::flex_tensor::{tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::Tensor;

    /// Backward step of a convolution with a bias: parents are (x, weight, bias).
    #[derive(Debug)]
    struct Conv2dWithBias;
    /// Backward step of a convolution without a bias: parents are (x, weight).
    #[derive(Debug)]
    struct Conv2dNoBias;

    /// What the backward step keeps: the checkpointed x and weight, and the geometry.
    type State = (NodeId, NodeId, Geometry);

    /// Computes the requested gradients from the checkpointed inputs and the output gradient.
    fn gradients(
        state: State,
        grad: FlexTensor,
        checkpointer: &mut Checkpointer,
        need: [bool; 3],
    ) -> [Option<FlexTensor>; 3] {
        let (x_id, weight_id, g) = state;
        let x = checkpointer
            .retrieve_node_output::<FlexTensor>(x_id)
            .to_contiguous();
        let weight = checkpointer
            .retrieve_node_output::<FlexTensor>(weight_id)
            .to_contiguous();
        let grad = grad.to_contiguous();
        let (dx, dw, db) =
            super::backward::backward(&g, values(&x), values(&weight), values(&grad), need);
        [
            dx.map(|v| tensor(v, g.input_shape())),
            dw.map(|v| tensor(v, g.weight_shape())),
            db.map(|v| tensor(v, [g.channels_out])),
        ]
    }

    impl Backward<Flex, 3> for Conv2dWithBias {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node);
            let need = ops.parents.each_ref().map(Option::is_some);
            let results = gradients(ops.state, grad, checkpointer, need);
            for (parent, result) in ops.parents.into_iter().zip(results) {
                if let (Some(node), Some(result)) = (parent, result) {
                    grads.register::<Flex>(node.id, result);
                }
            }
        }
    }

    impl Backward<Flex, 2> for Conv2dNoBias {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node);
            let [need_x, need_w] = ops.parents.each_ref().map(Option::is_some);
            let results = gradients(ops.state, grad, checkpointer, [need_x, need_w, false]);
            for (parent, result) in ops.parents.into_iter().zip(results) {
                if let (Some(node), Some(result)) = (parent, result) {
                    grads.register::<Flex>(node.id, result);
                }
            }
        }
    }

    /// The convolution as one autodiff node on `Autodiff<Flex, C>` with the im2col backward;
    /// hands the inputs back if they are not all on that backend.
    pub(super) fn try_conv2d<C: CheckpointStrategy>(
        g: Geometry,
        x: Tensor<4>,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
    ) -> Result<Tensor<4>, Inputs>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            x.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            weight.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            bias.clone()
                .map(|b| b.try_into_primitive::<Autodiff<Flex, C>>())
                .transpose(),
        );
        let (Ok(x_ad), Ok(w_ad), Ok(b_ad)) = converted else {
            return Err((x, weight, bias));
        };

        let bias_primitive = b_ad.as_ref().map(|b| b.primitive());
        let y = super::flex::forward(&g, x_ad.primitive(), w_ad.primitive(), bias_primitive);
        let output = match b_ad {
            Some(b_ad) => match Conv2dWithBias
                .prepare::<C>([x_ad.node(), w_ad.node(), b_ad.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x_ad), prep.checkpoint(&w_ad), g);
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
            None => match Conv2dNoBias
                .prepare::<C>([x_ad.node(), w_ad.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (prep.checkpoint(&x_ad), prep.checkpoint(&w_ad), g);
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            },
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }
}

// The slice-level kernels, by concern.
#[cfg(all(feature = "flex", feature = "autodiff"))]
mod backward;
#[cfg(feature = "flex")]
mod forward;
#[cfg(feature = "flex")]
// On wasm with relaxed SIMD the forward product is `wasm_gemm`'s; only the backward uses `gemm`.
#[cfg_attr(
    all(target_arch = "wasm32", feature = "wasm-relaxed-simd"),
    allow(dead_code)
)]
mod gemm;
#[cfg(feature = "flex")]
mod geometry;
#[cfg(feature = "flex")]
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", feature = "wasm-relaxed-simd")
    )),
    allow(dead_code)
)]
mod grid;
#[cfg(feature = "flex")]
mod im2col;
#[cfg(feature = "flex")]
mod scratch;
#[cfg(feature = "flex")]
#[cfg_attr(
    not(all(target_arch = "wasm32", feature = "wasm-relaxed-simd")),
    allow(dead_code)
)]
mod wasm_direct;
#[cfg(feature = "flex")]
#[cfg_attr(
    not(all(target_arch = "wasm32", feature = "wasm-relaxed-simd")),
    allow(dead_code)
)]
mod wasm_gemm;

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use crate::{calls, Kernel, Pass};
    use burn::tensor::{Device, Distribution, Tensor};

    fn options(stride: usize, padding: [(usize, usize); 2], dilation: usize) -> ConvOptions<2> {
        ConvOptions::new_with_padding([stride; 2], padding, [dilation; 2], 1)
    }

    /// Shapes the U-Net uses (3×3 same, 3×3 stride 2, 1×1) plus odd ones: asymmetric
    /// padding, dilation, rectangular kernels and images, no bias, batches cut into groups of
    /// several small images (8 + 2) and of one image each.
    fn cases() -> Vec<([usize; 4], [usize; 4], ConvOptions<2>, bool)> {
        vec![
            (
                [2, 3, 8, 8],
                [4, 3, 3, 3],
                options(1, [(1, 1), (1, 1)], 1),
                true,
            ),
            (
                [3, 4, 7, 9],
                [5, 4, 3, 3],
                options(2, [(1, 1), (1, 1)], 1),
                true,
            ),
            (
                [2, 6, 5, 5],
                [3, 6, 1, 1],
                options(1, [(0, 0), (0, 0)], 1),
                true,
            ),
            (
                [1, 2, 9, 6],
                [3, 2, 3, 2],
                options(1, [(2, 0), (0, 1)], 2),
                false,
            ),
            (
                [2, 3, 6, 7],
                [2, 3, 2, 3],
                options(3, [(0, 2), (1, 1)], 1),
                true,
            ),
            (
                [10, 2, 6, 6],
                [3, 2, 3, 3],
                options(1, [(1, 1), (1, 1)], 1),
                true,
            ),
            (
                [40, 8, 24, 24],
                [4, 8, 3, 3],
                options(1, [(1, 1), (1, 1)], 1),
                true,
            ),
            // For the direct kernels: a 1×1 kernel over 8 + 3 channels and 3 + 3 + 1 output
            // rows on one image, tiny images several to a vector, and groups of three 14×14
            // images with a shorter last group.
            (
                [1, 11, 20, 19],
                [7, 11, 1, 1],
                options(1, [(0, 0), (0, 0)], 1),
                true,
            ),
            (
                [5, 3, 3, 3],
                [5, 3, 3, 3],
                options(1, [(1, 1), (1, 1)], 1),
                false,
            ),
            (
                [8, 4, 14, 14],
                [6, 4, 3, 3],
                options(1, [(1, 1), (1, 1)], 1),
                true,
            ),
        ]
    }

    /// The direct stride-1 kernel against the im2col one on raw slices: tiny images several
    /// to a 16-lane vector, channel counts that leave 4/2/1-row weight blocks, asymmetric and
    /// oversized padding, rectangular kernels, one large image (its tiles split between
    /// threads) and batches of groups with a short last group.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn direct_convolution_matches_im2col() {
        use burn::tensor::TensorData;
        if !crate::flex_tensor::avx512() {
            eprintln!("skipped: the direct kernel needs AVX-512F, which this CPU lacks");
            return;
        }
        let random = |shape: [usize; 4]| {
            let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
            t.into_data().try_to_vec::<f32>().unwrap()
        };
        let cases = [
            ([5, 3, 3, 3], [11, 3, 3, 3], [(1, 1), (1, 1)]),
            ([3, 4, 7, 7], [15, 4, 3, 3], [(1, 1), (1, 1)]),
            ([2, 2, 6, 9], [8, 2, 3, 2], [(2, 0), (0, 1)]),
            ([2, 3, 5, 4], [3, 3, 1, 1], [(1, 1), (2, 0)]),
            ([1, 6, 40, 37], [9, 6, 3, 3], [(1, 1), (1, 1)]),
            ([37, 5, 14, 14], [16, 5, 3, 3], [(1, 1), (1, 1)]),
            ([3, 2, 28, 28], [1, 2, 3, 3], [(1, 1), (1, 1)]),
            ([4, 3, 8, 8], [6, 3, 5, 5], [(0, 0), (0, 0)]),
            // Reads past a row's end land in the next row's left padding.
            ([2, 3, 6, 7], [5, 3, 3, 3], [(1, 1), (1, 2)]),
            ([3, 2, 5, 6], [4, 2, 5, 5], [(2, 2), (2, 2)]),
            // Many channels (long sums per output).
            ([2, 80, 10, 10], [12, 80, 3, 3], [(1, 1), (1, 1)]),
            ([1, 200, 9, 9], [5, 200, 3, 3], [(1, 1), (1, 1)]),
        ];
        for (x_shape, w_shape, padding) in cases {
            let g = geometry::Geometry::new(&x_shape, &w_shape, &options(1, padding, 1)).unwrap();
            let plan = direct::Plan::new(&g, direct::FORWARD_POSITIONS).expect("a direct plan");
            let (x, w) = (random(x_shape), random(w_shape));
            let b = random([w_shape[0], 1, 1, 1]);
            let before = calls(Kernel::Conv2dDirect, Pass::Forward);
            let ours = direct::forward(&plan, &x, &w, Some(&b));
            assert!(
                calls(Kernel::Conv2dDirect, Pass::Forward) > before,
                "the direct kernel did not run"
            );
            let reference = forward::forward_im2col(&g, &x, &w, Some(&b));
            let out = g.output_shape();
            let ours = Tensor::<4>::from_data(TensorData::new(ours, out), &Device::flex());
            let reference =
                Tensor::<4>::from_data(TensorData::new(reference, out), &Device::flex());
            let err = relative_error(ours, reference);
            assert!(
                err < 1e-5,
                "{x_shape:?} ⋆ {w_shape:?} {padding:?}: relative error {err}"
            );
        }
    }

    /// An image's output is the same, bit for bit, alone and in any batch, on both forward paths
    /// (issue 16's batching rests on it): the im2col products of one 7 × 7 image (n = 49) and of
    /// a group (n ≥ 98) once took different depth blocks in `gemm` for k > 512.
    #[test]
    fn an_images_output_does_not_depend_on_its_batch() {
        let random = |shape: [usize; 4]| {
            let t = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &Device::flex());
            t.into_data().try_to_vec::<f32>().unwrap()
        };
        // k = C_in · 9 = 576 and 1152 at 7 × 7 and 14 × 14 (the U-Net's lowest levels), and a
        // short one.
        for (x_shape, w_shape) in [
            ([9, 64, 7, 7], [64, 64, 3, 3]),
            ([9, 128, 7, 7], [64, 128, 3, 3]),
            ([6, 64, 14, 14], [32, 64, 3, 3]),
            ([7, 8, 28, 28], [16, 8, 3, 3]),
        ] {
            let g = geometry::Geometry::new(&x_shape, &w_shape, &options(1, [(1, 1), (1, 1)], 1))
                .unwrap();
            let (x, w, b) = (
                random(x_shape),
                random(w_shape),
                random([w_shape[0], 1, 1, 1]),
            );
            let (plane, out) = (g.plane(), g.channels_out * g.p());
            let one = |i: usize| {
                let g1 = geometry::Geometry::new(
                    &[1, x_shape[1], x_shape[2], x_shape[3]],
                    &w_shape,
                    &options(1, [(1, 1), (1, 1)], 1),
                )
                .unwrap();
                let xi = &x[i * plane..(i + 1) * plane];
                (
                    forward::forward(&g1, xi, &w, Some(&b)),
                    forward::forward_im2col(&g1, xi, &w, Some(&b)),
                )
            };
            let batched = forward::forward(&g, &x, &w, Some(&b));
            let batched_im2col = forward::forward_im2col(&g, &x, &w, Some(&b));
            for i in 0..x_shape[0] {
                let (alone, alone_im2col) = one(i);
                let at = i * out..(i + 1) * out;
                assert!(batched[at.clone()] == alone[..], "{x_shape:?}: image {i}");
                assert!(
                    batched_im2col[at] == alone_im2col[..],
                    "{x_shape:?}: image {i}, im2col"
                );
            }
        }
    }

    #[test]
    fn forward_matches_burn_conv2d_on_flex() {
        let device = Device::flex();
        for (x_shape, w_shape, options, with_bias) in cases() {
            let x = Tensor::<4>::random(x_shape, Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random(w_shape, Distribution::Normal(0.0, 1.0), &device);
            let b = with_bias.then(|| {
                Tensor::<1>::random([w_shape[0]], Distribution::Normal(0.0, 1.0), &device)
            });
            let before = calls(Kernel::Conv2d, Pass::Forward);
            let ours = conv2d_op(x.clone(), w.clone(), b.clone(), options.clone());
            assert!(
                calls(Kernel::Conv2d, Pass::Forward) > before,
                "the im2col path did not run"
            );
            let burn = module::conv2d(x, w, b, options);
            assert_eq!(ours.dims(), burn.dims(), "{x_shape:?} ⋆ {w_shape:?}");
            let err = relative_error(ours, burn);
            assert!(
                err < 1e-5,
                "{x_shape:?} ⋆ {w_shape:?}: relative error {err}"
            );
        }
    }

    #[test]
    fn gradients_match_burn_conv2d_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        for (x_shape, w_shape, options, with_bias) in cases() {
            let x = Tensor::<4>::random(x_shape, Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random(w_shape, Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<1>::random([w_shape[0]], Distribution::Normal(0.0, 1.0), &device);
            // A random upstream gradient, so every output position is weighted differently.
            let out_dims = module::conv2d(x.clone(), w.clone(), None, options.clone()).dims();
            let r = Tensor::<4>::random(out_dims, Distribution::Normal(0.0, 1.0), &device);
            let run = |fast: bool| {
                let (x, w, b) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let bias = with_bias.then(|| b.clone());
                let y = if fast {
                    conv2d_op(x.clone(), w.clone(), bias, options.clone())
                } else {
                    module::conv2d(x.clone(), w.clone(), bias, options.clone())
                };
                let grads = (y * r.clone()).sum().backward();
                let dx = x.grad(&grads).expect("x grad");
                let dw = w.grad(&grads).expect("w grad");
                let db = with_bias.then(|| b.grad(&grads).expect("b grad"));
                (dx, dw, db)
            };
            let before = calls(Kernel::Conv2d, Pass::Backward);
            #[cfg(target_arch = "x86_64")]
            let direct_before = calls(Kernel::Conv2dDirect, Pass::Backward);
            let (dx, dw, db) = run(true);
            #[cfg(target_arch = "x86_64")]
            {
                // The direct weight gradient runs where the direct kernels pay off (3×3 here).
                let g = geometry::Geometry::new(&x_shape, &w_shape, &options).unwrap();
                let plan = direct::Plan::new(&g, direct::WEIGHT_GRADIENT_POSITIONS);
                if plan.is_some_and(|p| p.pays_off()) {
                    let ran = calls(Kernel::Conv2dDirect, Pass::Backward) > direct_before;
                    assert!(ran, "direct ∂L/∂W did not run");
                }
            }
            assert!(
                calls(Kernel::Conv2d, Pass::Backward) > before,
                "the im2col backward did not run"
            );
            let (rx, rw, rb) = run(false);
            let case = format!("{x_shape:?} ⋆ {w_shape:?}");
            assert!(relative_error(dx, rx) < 1e-5, "{case}: dx");
            assert!(relative_error(dw, rw) < 1e-5, "{case}: dw");
            if let (Some(db), Some(rb)) = (db, rb) {
                assert!(relative_error(db, rb) < 1e-5, "{case}: db");
            }
        }
    }
}
