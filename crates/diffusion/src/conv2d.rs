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
//! (the same one Flex uses, with its AVX-512 kernels where the CPU has them).
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

/// `burn::tensor::module::conv2d`, routed to the im2col kernels for f32 tensors on Flex.
///
/// # Shapes
/// - `x`: `[batch, channels_in, height, width]`
/// - `weight`: `[channels_out, channels_in / groups, kernel_h, kernel_w]`
/// - `bias`: `[channels_out]`
/// - output: `[batch, channels_out, height_out, width_out]`
pub fn conv2d(
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

/// [`Conv2d::forward`] through [`conv2d`]: the same parameters and padding (`Same` padding,
/// which the U-Net does not use, goes to `Conv2d::forward` itself).
///
/// # Shapes
/// - `input`: `[batch, channels_in, height, width]`
/// - output: `[batch, channels_out, height_out, width_out]`
pub fn forward(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => return conv.forward(input),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d(
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
    use super::kernels::{self, Geometry};
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
        let y = kernels::forward(g, values(&x), values(&weight), bias.as_ref().map(values));
        tensor(y, g.output_shape())
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
        let (dx, dw, db) = kernels::backward(&g, values(&x), values(&weight), values(&grad), need);
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

#[cfg(feature = "flex")]
mod kernels {
    //! The im2col kernels on plain f32 slices in NCHW order.
    //!
    //! The batch is cut into groups of images with at least [`MIN_COLUMNS`] output pixels
    //! between them; groups run in parallel, each building its im2col block in a reused,
    //! cache-sized scratch buffer and multiplying it right away. With fewer groups than threads,
    //! the matrix products themselves run in parallel instead.

    use burn::tensor::ops::ConvOptions;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// Calls of [`forward`] and [`backward`], so tests can check that the fast path ran.
    #[cfg(test)]
    pub(super) static CALLS: crate::flex_tensor::Calls = crate::flex_tensor::Calls::new();

    /// Fewest output pixels per matrix product: images smaller than this are grouped.
    const MIN_COLUMNS: usize = 256;

    /// Sizes of one ungrouped 2-D convolution.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Geometry {
        pub batch: usize,
        pub channels_in: usize,
        pub height: usize,
        pub width: usize,
        pub channels_out: usize,
        pub kernel: [usize; 2],
        pub stride: [usize; 2],
        pub dilation: [usize; 2],
        /// Padding before the first row and column.
        pub pad: [usize; 2],
        pub height_out: usize,
        pub width_out: usize,
    }

    impl Geometry {
        /// The geometry of `x ⋆ weight`, or `None` for grouped or empty convolutions and
        /// mismatched channels (which Burn's own conv2d reports).
        pub fn new(x: &[usize; 4], weight: &[usize; 4], options: &ConvOptions<2>) -> Option<Self> {
            let [batch, channels_in, height, width] = *x;
            let [channels_out, weight_in, kh, kw] = *weight;
            if options.groups != 1 || weight_in != channels_in {
                return None;
            }
            let out =
                |size: usize, (before, after): (usize, usize), k: usize, s: usize, d: usize| {
                    let span = d * (k.max(1) - 1) + 1;
                    (size + before + after)
                        .checked_sub(span)
                        .map(|free| free / s + 1)
                };
            let height_out = out(
                height,
                options.padding[0],
                kh,
                options.stride[0],
                options.dilation[0],
            )?;
            let width_out = out(
                width,
                options.padding[1],
                kw,
                options.stride[1],
                options.dilation[1],
            )?;
            let g = Self {
                batch,
                channels_in,
                height,
                width,
                channels_out,
                kernel: [kh, kw],
                stride: options.stride,
                dilation: options.dilation,
                pad: [options.padding[0].0, options.padding[1].0],
                height_out,
                width_out,
            };
            let sizes = [
                batch,
                channels_in,
                height,
                width,
                channels_out,
                kh,
                kw,
                height_out,
                width_out,
            ];
            (!sizes.contains(&0)).then_some(g)
        }

        /// Rows of the im2col matrix: C_in · k_h · k_w.
        pub fn k(&self) -> usize {
            self.channels_in * self.kernel[0] * self.kernel[1]
        }

        /// Output pixels per image.
        pub fn p(&self) -> usize {
            self.height_out * self.width_out
        }

        /// Input values per image.
        fn plane(&self) -> usize {
            self.channels_in * self.height * self.width
        }

        pub fn input_shape(&self) -> [usize; 4] {
            [self.batch, self.channels_in, self.height, self.width]
        }

        pub fn weight_shape(&self) -> [usize; 4] {
            [
                self.channels_out,
                self.channels_in,
                self.kernel[0],
                self.kernel[1],
            ]
        }

        pub fn output_shape(&self) -> [usize; 4] {
            [
                self.batch,
                self.channels_out,
                self.height_out,
                self.width_out,
            ]
        }

        /// Images per group.
        fn group_size(&self) -> usize {
            MIN_COLUMNS.div_ceil(self.p()).clamp(1, self.batch)
        }

        /// Parallelism inside the matrix products: only when groups cannot keep threads busy.
        fn inner_parallelism(&self) -> gemm::Parallelism {
            if self.batch.div_ceil(self.group_size()) < rayon::current_num_threads() {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            }
        }

        /// For kernel column `j`, the output columns `lo..hi` that read inside the image, and
        /// the input column of output column 0 (`ix = ox · stride + offset`).
        fn columns(&self, j: usize) -> (usize, usize, isize) {
            let offset = (j * self.dilation[1]) as isize - self.pad[1] as isize;
            let s = self.stride[1] as isize;
            let lo = if offset >= 0 {
                0
            } else {
                (-offset + s - 1) / s
            };
            let hi = (self.width as isize - offset + s - 1).div_euclid(s).max(0);
            let hi = (hi as usize).min(self.width_out);
            ((lo as usize).min(hi), hi, offset)
        }

        /// For stride 1, dilation 1 and "same" width, one kernel tap `(i, j)` reads the input
        /// image shifted by a constant: output index `t` reads input index `t + shift` for all
        /// output rows `rows` and columns `lo..hi` (returned as `(rows, lo, hi, shift)`), so a
        /// tap is one contiguous copy plus a few border columns to clear.
        fn shifted_tap(
            &self,
            i: usize,
            j: usize,
        ) -> Option<(std::ops::Range<usize>, usize, usize, isize)> {
            let unit = self.stride == [1, 1] && self.dilation == [1, 1];
            if !unit || self.width_out != self.width {
                return None;
            }
            let dy = i as isize - self.pad[0] as isize;
            let first = (-dy).clamp(0, self.height_out as isize) as usize;
            let last = (self.height as isize - dy).clamp(first as isize, self.height_out as isize)
                as usize;
            let (lo, hi, dx) = self.columns(j);
            Some((first..last, lo, hi, dy * self.width as isize + dx))
        }

        /// The convolution that computes this one's input gradient from its output gradient,
        /// for stride 1 and padding smaller than the kernel: kernel flipped and transposed,
        /// padding `k − 1 − p` before, output the input's size. `None` otherwise.
        fn input_gradient_as_convolution(&self) -> Option<Self> {
            let [kh, kw] = self.kernel;
            if self.stride != [1, 1]
                || self.dilation != [1, 1]
                || self.pad[0] >= kh
                || self.pad[1] >= kw
            {
                return None;
            }
            Some(Self {
                batch: self.batch,
                channels_in: self.channels_out,
                height: self.height_out,
                width: self.width_out,
                channels_out: self.channels_in,
                kernel: self.kernel,
                stride: [1, 1],
                dilation: [1, 1],
                pad: [kh - 1 - self.pad[0], kw - 1 - self.pad[1]],
                height_out: self.height,
                width_out: self.width,
            })
        }

        /// The input row read by output row `oy` for kernel row `i`, if inside the image.
        fn row(&self, oy: usize, i: usize) -> Option<usize> {
            let iy = (oy * self.stride[0] + i * self.dilation[0]) as isize - self.pad[0] as isize;
            (0..self.height as isize)
                .contains(&iy)
                .then_some(iy as usize)
        }
    }

    /// Builds the im2col matrix of a group of images (`x` holds exactly those): `[K, nb·P]`,
    /// row `(c, i, j)` holding, for every image and output pixel, the input value under kernel
    /// tap `(i, j)` (0 in the padding).
    fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
        let p = g.p();
        let nb = x.len() / g.plane();
        let n = nb * p;
        let [kh, kw] = g.kernel;
        let hw = g.height * g.width;
        let s = g.stride[1];
        debug_assert_eq!(cols.len(), g.k() * n);
        for (r, row) in cols.chunks_exact_mut(n).enumerate() {
            let (c, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
            let (lo, hi, offset) = g.columns(j);
            let start = lo as isize * s as isize + offset;
            let tap = g.shifted_tap(i, j);
            for (bi, image_row) in row.chunks_exact_mut(p).enumerate() {
                let src = &x[(bi * g.channels_in + c) * hw..][..hw];
                if let Some((rows, lo, hi, shift)) = tap.clone() {
                    copy_shifted(image_row, src, g.width_out, rows, lo, hi, shift);
                    continue;
                }
                for (oy, dst) in image_row.chunks_exact_mut(g.width_out).enumerate() {
                    let Some(iy) = g.row(oy, i) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &src[iy * g.width..][..g.width];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let start = start as usize;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (d, ix) in dst[lo..hi].iter_mut().zip((start..).step_by(s)) {
                            *d = src[ix];
                        }
                    }
                }
            }
        }
    }

    /// Adds the columns of `dcols` (`[K, nb·P]`, laid out as [`im2col`]'s output) back onto
    /// the input pixels they were read from; `dx` holds the group's `[nb, C_in, H, W]`.
    fn col2im(g: &Geometry, dcols: &mut [f32], dx: &mut [f32]) {
        let p = g.p();
        let n = dx.len() / g.plane() * p;
        let [kh, kw] = g.kernel;
        let hw = g.height * g.width;
        let s = g.stride[1];
        dx.fill(0.0);
        for (plane_index, plane) in dx.chunks_exact_mut(hw).enumerate() {
            let (bi, c) = (plane_index / g.channels_in, plane_index % g.channels_in);
            for i in 0..kh {
                for j in 0..kw {
                    let (lo, hi, offset) = g.columns(j);
                    let start = (lo as isize * s as isize + offset) as usize;
                    let r = (c * kh + i) * kw + j;
                    if let Some((rows, lo, hi, shift)) = g.shifted_tap(i, j) {
                        let src = &mut dcols[r * n + bi * p..][..p];
                        add_shifted(plane, src, g.width_out, rows, lo, hi, shift);
                        continue;
                    }
                    let src = &dcols[r * n + bi * p..][..p];
                    for (oy, src) in src.chunks_exact(g.width_out).enumerate() {
                        let Some(iy) = g.row(oy, i) else { continue };
                        let dst = &mut plane[iy * g.width..][..g.width];
                        if s == 1 {
                            for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(&src[lo..hi])
                            {
                                *d += v;
                            }
                        } else {
                            for (ix, v) in (start..).step_by(s).zip(&src[lo..hi]) {
                                dst[ix] += v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// One tap of [`Geometry::shifted_tap`]: `dst[t] = src[t + shift]` over `rows`, columns
    /// `lo..hi`; 0 elsewhere.
    fn copy_shifted(
        dst: &mut [f32],
        src: &[f32],
        width: usize,
        rows: std::ops::Range<usize>,
        lo: usize,
        hi: usize,
        shift: isize,
    ) {
        if rows.is_empty() || lo == hi {
            dst.fill(0.0);
            return;
        }
        let (start, end) = (rows.start * width + lo, (rows.end - 1) * width + hi);
        dst[..start].fill(0.0);
        dst[end..].fill(0.0);
        let from = (start as isize + shift) as usize;
        dst[start..end].copy_from_slice(&src[from..from + (end - start)]);
        // The contiguous copy ran across row ends; clear the columns outside lo..hi (one or
        // two per row for a 3×3 kernel: plain stores, not memset calls).
        clear_border_columns(
            &mut dst[rows.start * width..rows.end * width],
            width,
            lo,
            hi,
        );
    }

    /// Zeroes columns `..lo` and `hi..` of every row of a row-major block.
    #[inline(always)]
    fn clear_border_columns(block: &mut [f32], width: usize, lo: usize, hi: usize) {
        // LLVM turns zeroing loops into memset calls, which cost more than the one or two
        // stores a row needs; spell the common widths out.
        let clear = |cells: &mut [f32]| match cells.len() {
            0 => {}
            1 => cells[0] = 0.0,
            2 => cells.copy_from_slice(&[0.0; 2]),
            _ => cells.fill(0.0),
        };
        for row in block.chunks_exact_mut(width) {
            clear(&mut row[..lo]);
            clear(&mut row[hi..]);
        }
    }

    /// The adjoint of [`copy_shifted`]: `dst[t + shift] += src[t]` over `rows`, columns
    /// `lo..hi` (`src` is scratch: its other columns are cleared first).
    fn add_shifted(
        dst: &mut [f32],
        src: &mut [f32],
        width: usize,
        rows: std::ops::Range<usize>,
        lo: usize,
        hi: usize,
        shift: isize,
    ) {
        if rows.is_empty() || lo == hi {
            return;
        }
        clear_border_columns(
            &mut src[rows.start * width..rows.end * width],
            width,
            lo,
            hi,
        );
        let (start, end) = (rows.start * width + lo, (rows.end - 1) * width + hi);
        let to = (start as isize + shift) as usize;
        for (d, v) in dst[to..to + (end - start)].iter_mut().zip(&src[start..end]) {
            *d += v;
        }
    }

    /// A read-only matrix operand: element (row, col) at `data[row · rs + col · cs]`.
    struct Mat<'a> {
        data: &'a [f32],
        rs: usize,
        cs: usize,
    }

    /// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, `dst` row-major with row stride `n`.
    /// Without `accumulate`, `dst` is only written (it may be uninitialised).
    fn matmul(
        (m, n, k): (usize, usize, usize),
        dst: &mut [MaybeUninit<f32>],
        accumulate: bool,
        lhs: Mat,
        rhs: Mat,
        parallelism: gemm::Parallelism,
    ) {
        let last = |rows: usize, cols: usize, a: &Mat| (rows - 1) * a.rs + (cols - 1) * a.cs;
        assert!(dst.len() >= m * n, "matmul: destination too small");
        assert!(
            last(m, k, &lhs) < lhs.data.len(),
            "matmul: lhs out of bounds"
        );
        assert!(
            last(k, n, &rhs) < rhs.data.len(),
            "matmul: rhs out of bounds"
        );
        // SAFETY: every index the product touches is bounds-checked above; dst is exclusive.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                n as isize,
                accumulate,
                lhs.data.as_ptr(),
                lhs.cs as isize,
                lhs.rs as isize,
                rhs.data.as_ptr(),
                rhs.cs as isize,
                rhs.rs as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }

    /// The convolution: `[B, C_out, H_out, W_out]` from `x` `[B, C_in, H, W]`,
    /// `weight` `[C_out, C_in, k_h, k_w]` and `bias` `[C_out]`.
    pub(super) fn forward(
        g: &Geometry,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        #[cfg(test)]
        CALLS.hit(0);
        #[cfg(target_arch = "x86_64")]
        {
            let plan = super::direct::Plan::new(g, super::direct::FORWARD_POSITIONS);
            if let Some(plan) = plan.filter(super::direct::Plan::pays_off) {
                return super::direct::forward(&plan, x, weight, bias);
            }
        }
        forward_im2col(g, x, weight, bias)
    }

    /// [`forward`] through im2col and `gemm`, for every geometry.
    pub(super) fn forward_im2col(
        g: &Geometry,
        x: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let (k, p, co) = (g.k(), g.p(), g.channels_out);
        let gs = g.group_size();
        let parallelism = g.inner_parallelism();
        crate::flex_tensor::written(g.batch * co * p, |y| {
            y.par_chunks_mut(gs * co * p)
                .zip(x.par_chunks(gs * g.plane()))
                .for_each_init(Scratch::take, |scratch, (y, x)| {
                    let n = x.len() / g.plane() * p;
                    let [cols, product, _] = &mut scratch.0;
                    let cols = sized(cols, k * n);
                    im2col(g, x, cols);
                    let w = Mat {
                        data: weight,
                        rs: k,
                        cs: 1,
                    };
                    let cols = Mat {
                        data: cols,
                        rs: n,
                        cs: 1,
                    };
                    if n == p {
                        // One image: the product is the output; start from the bias.
                        if let Some(bias) = bias {
                            for (row, &b) in y.chunks_exact_mut(p).zip(bias) {
                                row.fill(MaybeUninit::new(b));
                            }
                        }
                        matmul((co, n, k), y, bias.is_some(), w, cols, parallelism);
                        return;
                    }
                    // [C_out, nb·P] → [nb, C_out, P], adding the bias.
                    let product = sized(product, co * n);
                    matmul((co, n, k), uninit(product), false, w, cols, parallelism);
                    for (index, dst) in y.chunks_exact_mut(p).enumerate() {
                        let (bi, c) = (index / co, index % co);
                        let b = bias.map_or(0.0, |bias| bias[c]);
                        for (d, v) in dst.iter_mut().zip(&product[c * n + bi * p..][..p]) {
                            d.write(v + b);
                        }
                    }
                })
        })
    }

    /// An initialised buffer viewed as one the product may overwrite.
    fn uninit(buffer: &mut [f32]) -> &mut [MaybeUninit<f32>] {
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
    /// keep their aligned loads on one line: 2–10 % faster, most for the weight gradient.
    pub(super) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
        if buffer.len() < len + 16 {
            buffer.resize(len + 16, 0.0);
        }
        let skip = buffer.as_ptr().align_offset(64).min(16);
        &mut buffer[skip..skip + len]
    }

    /// What [`sized`] last handed out of `buffer`, and beyond (from the same boundary).
    pub(super) fn aligned(buffer: &[f32]) -> &[f32] {
        &buffer[buffer.as_ptr().align_offset(64).min(16)..]
    }

    /// `W'[c_in, c_out, i, j] = W[c_out, c_in, k_h − 1 − i, k_w − 1 − j]`.
    fn flip_transpose(g: &Geometry, weight: &[f32]) -> Vec<f32> {
        let [kh, kw] = g.kernel;
        let (ci, co) = (g.channels_in, g.channels_out);
        let mut out = vec![0.0f32; weight.len()];
        for o in 0..co {
            for c in 0..ci {
                for i in 0..kh {
                    for j in 0..kw {
                        out[((c * co + o) * kh + i) * kw + j] =
                            weight[((o * ci + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                    }
                }
            }
        }
        out
    }

    /// Per-worker state of the backward pass: partial weight and bias gradients and scratch.
    struct Partial {
        dw: Vec<f32>,
        scratch: Scratch,
    }

    impl Partial {
        fn new() -> Self {
            Self {
                dw: Vec::new(),
                scratch: Scratch::take(),
            }
        }
    }

    /// (∂L/∂x, ∂L/∂W, ∂L/∂b), each present if it was asked for.
    pub(super) type Gradients = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

    /// Gradients of the convolution with respect to x, the weight and the bias (each only if
    /// `need` says so), given `grad` = ∂L/∂y `[B, C_out, H_out, W_out]`.
    pub(super) fn backward(
        g: &Geometry,
        x: &[f32],
        weight: &[f32],
        grad: &[f32],
        need: [bool; 3],
    ) -> Gradients {
        #[cfg(test)]
        CALLS.hit(1);
        let [need_x, need_w, need_b] = need;
        let (k, p, co) = (g.k(), g.p(), g.channels_out);
        let gs = g.group_size();
        let parallelism = g.inner_parallelism();
        // For stride 1 the input gradient is itself a convolution (of ∂L/∂y with the flipped,
        // transposed kernel): run it as one, writing ∂L/∂x directly, instead of a product with
        // the short inner dimension C_out followed by a scatter-add.
        let transposed = need_x.then(|| g.input_gradient_as_convolution()).flatten();
        let dx_by_convolution =
            transposed.map(|gt| forward(&gt, grad, &flip_transpose(g, weight), None));
        let need_x = need_x && dx_by_convolution.is_none();
        #[cfg(target_arch = "x86_64")]
        let dw_direct = need_w
            .then(|| super::direct::Plan::new(g, super::direct::WEIGHT_GRADIENT_POSITIONS))
            .flatten()
            .filter(super::direct::Plan::pays_off)
            .and_then(|plan| super::direct::weight_gradient(&plan, x, grad));
        #[cfg(not(target_arch = "x86_64"))]
        let dw_direct: Option<Vec<f32>> = None;
        let need_w = need_w && dw_direct.is_none();
        let db = need_b.then(|| bias_gradient(g, grad));
        if !need_x && !need_w {
            return (dx_by_convolution, dw_direct, db);
        }
        let mut dx = need_x.then(|| vec![0.0f32; g.batch * g.plane()]);
        let groups = g.batch.div_ceil(gs);
        let slots: Vec<Option<&mut [f32]>> = match dx.as_mut() {
            Some(dx) => dx.chunks_mut(gs * g.plane()).map(Some).collect(),
            None => (0..groups).map(|_| None).collect(),
        };
        let dw = slots
            .into_par_iter()
            .enumerate()
            .fold(Partial::new, |mut acc, (group, dx)| {
                let [cols, dcols, dy_buffer] = &mut acc.scratch.0;
                let b0 = group * gs;
                let nb = gs.min(g.batch - b0);
                let n = nb * p;
                let grad = &grad[b0 * co * p..(b0 + nb) * co * p];
                // ∂L/∂y of the group as [C_out, nb·P] (already so for one image).
                let dy: &[f32] = if nb == 1 {
                    grad
                } else {
                    let dy = sized(dy_buffer, co * n);
                    for (c, row) in dy.chunks_exact_mut(n).enumerate() {
                        for (bi, dst) in row.chunks_exact_mut(p).enumerate() {
                            dst.copy_from_slice(&grad[(bi * co + c) * p..][..p]);
                        }
                    }
                    dy
                };
                if need_w {
                    let cols = sized(cols, k * n);
                    im2col(g, &x[b0 * g.plane()..(b0 + nb) * g.plane()], cols);
                    acc.dw.resize(co * k, 0.0);
                    let lhs = Mat {
                        data: dy,
                        rs: n,
                        cs: 1,
                    };
                    let rhs = Mat {
                        data: cols,
                        rs: 1,
                        cs: n,
                    };
                    matmul((co, k, n), uninit(&mut acc.dw), true, lhs, rhs, parallelism);
                }
                if let Some(dx) = dx {
                    let dcols = sized(dcols, k * n);
                    let wt = Mat {
                        data: weight,
                        rs: 1,
                        cs: k,
                    };
                    let dy = Mat {
                        data: dy,
                        rs: n,
                        cs: 1,
                    };
                    matmul((k, n, co), uninit(dcols), false, wt, dy, parallelism);
                    col2im(g, dcols, dx);
                }
                acc
            })
            .map(|acc| acc.dw)
            .reduce(Vec::new, add);
        let dx = dx.or(dx_by_convolution);
        let dw = need_w.then(|| if dw.is_empty() { vec![0.0; co * k] } else { dw });
        (dx, dw.or(dw_direct), db)
    }

    /// ∂L/∂b: the sums of `grad` (`[B, C_out, H_out, W_out]`) over images and pixels.
    fn bias_gradient(g: &Geometry, grad: &[f32]) -> Vec<f32> {
        let p = g.p();
        let sums = grad
            .par_chunks(g.channels_out * p)
            .fold(Vec::new, |mut sums: Vec<f64>, image| {
                sums.resize(g.channels_out, 0.0);
                for (sum, row) in sums.iter_mut().zip(image.chunks_exact(p)) {
                    // 16 running sums, so the loop vectorises.
                    let mut lanes = [0.0f32; 16];
                    let mut chunks = row.chunks_exact(16);
                    for chunk in &mut chunks {
                        for (l, v) in lanes.iter_mut().zip(chunk) {
                            *l += v;
                        }
                    }
                    let rest = chunks.remainder().iter().sum::<f32>();
                    *sum += (lanes.iter().sum::<f32>() + rest) as f64;
                }
                sums
            })
            .reduce(Vec::new, add);
        (0..g.channels_out)
            .map(|c| sums.get(c).copied().unwrap_or(0.0) as f32)
            .collect()
    }

    /// Element-wise sum of two partial results (an empty one is zero).
    pub(super) fn add<T: Copy + core::ops::AddAssign>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
        if a.is_empty() {
            return b;
        }
        for (a, b) in a.iter_mut().zip(&b) {
            *a += *b;
        }
        a
    }
}

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use burn::tensor::{Device, Distribution, Tensor};

    fn options(stride: usize, padding: [(usize, usize); 2], dilation: usize) -> ConvOptions<2> {
        ConvOptions::new_with_padding([stride; 2], padding, [dilation; 2], 1)
    }

    fn calls(which: usize) -> usize {
        kernels::CALLS.get(which)
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
            let g = kernels::Geometry::new(&x_shape, &w_shape, &options(1, padding, 1)).unwrap();
            let plan = direct::Plan::new(&g, direct::FORWARD_POSITIONS).expect("a direct plan");
            let (x, w) = (random(x_shape), random(w_shape));
            let b = random([w_shape[0], 1, 1, 1]);
            let before = direct::CALLS.get(0);
            let ours = direct::forward(&plan, &x, &w, Some(&b));
            assert!(
                direct::CALLS.get(0) > before,
                "the direct kernel did not run"
            );
            let reference = kernels::forward_im2col(&g, &x, &w, Some(&b));
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

    #[test]
    fn forward_matches_burn_conv2d_on_flex() {
        let device = Device::flex();
        for (x_shape, w_shape, options, with_bias) in cases() {
            let x = Tensor::<4>::random(x_shape, Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random(w_shape, Distribution::Normal(0.0, 1.0), &device);
            let b = with_bias.then(|| {
                Tensor::<1>::random([w_shape[0]], Distribution::Normal(0.0, 1.0), &device)
            });
            let before = calls(0);
            let ours = conv2d(x.clone(), w.clone(), b.clone(), options.clone());
            assert!(calls(0) > before, "the im2col path did not run");
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
                    conv2d(x.clone(), w.clone(), bias, options.clone())
                } else {
                    module::conv2d(x.clone(), w.clone(), bias, options.clone())
                };
                let grads = (y * r.clone()).sum().backward();
                let dx = x.grad(&grads).expect("x grad");
                let dw = w.grad(&grads).expect("w grad");
                let db = with_bias.then(|| b.grad(&grads).expect("b grad"));
                (dx, dw, db)
            };
            let before = calls(1);
            #[cfg(target_arch = "x86_64")]
            let direct_before = direct::CALLS.get(1);
            let (dx, dw, db) = run(true);
            #[cfg(target_arch = "x86_64")]
            {
                // The direct weight gradient runs where the direct kernels pay off (3×3 here).
                let g = kernels::Geometry::new(&x_shape, &w_shape, &options).unwrap();
                let plan = direct::Plan::new(&g, direct::WEIGHT_GRADIENT_POSITIONS);
                if plan.is_some_and(|p| p.pays_off()) {
                    let ran = direct::CALLS.get(1) > direct_before;
                    assert!(ran, "direct ∂L/∂W did not run");
                }
            }
            assert!(calls(1) > before, "the im2col backward did not run");
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
