//! The sizes of one ungrouped 2-D convolution and everything derived from them: output size,
//! im2col dimensions K = C_in·k_h·k_w and P = H_out·W_out, and how many images share one
//! matrix product.

use burn::tensor::ops::ConvOptions;

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
        let out = |size: usize, (before, after): (usize, usize), k: usize, s: usize, d: usize| {
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
    pub fn plane(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    #[cfg(feature = "autodiff")]
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels_in, self.height, self.width]
    }

    #[cfg(feature = "autodiff")]
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
    pub fn group_size(&self) -> usize {
        MIN_COLUMNS.div_ceil(self.p()).clamp(1, self.batch)
    }

    /// Parallelism inside the matrix products: only when groups cannot keep threads busy.
    pub fn inner_parallelism(&self) -> gemm::Parallelism {
        if self.batch.div_ceil(self.group_size()) < rayon::current_num_threads() {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        }
    }

    /// For kernel column `j`, the output columns `lo..hi` that read inside the image, and
    /// the input column of output column 0 (`ix = ox · stride + offset`).
    pub fn columns(&self, j: usize) -> (usize, usize, isize) {
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
    pub fn shifted_tap(
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
        let last =
            (self.height as isize - dy).clamp(first as isize, self.height_out as isize) as usize;
        let (lo, hi, dx) = self.columns(j);
        Some((first..last, lo, hi, dy * self.width as isize + dx))
    }

    /// The convolution that computes this one's input gradient from its output gradient,
    /// for stride 1 and padding smaller than the kernel: kernel flipped and transposed,
    /// padding `k − 1 − p` before, output the input's size. `None` otherwise.
    #[cfg(feature = "autodiff")]
    pub fn input_gradient_as_convolution(&self) -> Option<Self> {
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
    pub fn row(&self, oy: usize, i: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + i * self.dilation[0]) as isize - self.pad[0] as isize;
        (0..self.height as isize)
            .contains(&iy)
            .then_some(iy as usize)
    }
}
