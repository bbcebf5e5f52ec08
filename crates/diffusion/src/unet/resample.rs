//! Resolution changes between U-Net levels: strided-conv downsampling and nearest + conv
//! upsampling (DDPM's `Downsample(with_conv=True)` / `Upsample(with_conv=True)`).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use flex_kernels as kernels;

/// A 3×3 convolution with padding 1 and the given stride.
pub(crate) fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// Halves the resolution with a 3×3 conv of stride 2: padding 1 on every side (odd sizes round
/// up: 7 → 4), or padding 0 with a row and column of zeros added at the bottom and right
/// (TensorFlow's `SAME` for even sizes; diffusers' `downsample_padding = 0`).
#[derive(Module, Debug)]
pub struct Downsample {
    /// The strided convolution.
    pub conv: Conv2d,
}

impl Downsample {
    /// A downsampler for `channels` channels with `padding` 1 or 0 (see the type).
    pub fn new(channels: usize, padding: usize, device: &Device) -> Self {
        let padding = if padding == 0 {
            PaddingConfig2d::Explicit(0, 0, 1, 1)
        } else {
            PaddingConfig2d::Explicit(1, 1, 1, 1)
        };
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_stride([2, 2])
                .with_padding(padding)
                .init(device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]`; output: `[batch, c, ⌈h/2⌉, ⌈w/2⌉]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        kernels::conv2d(&self.conv, x)
    }
}

/// Doubles the resolution by nearest-neighbour repetition, then a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample {
    /// The convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample {
    /// An upsampler for `channels` channels.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            conv: conv3x3(channels, channels, 1, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, c, h, w]`; output: `[batch, c, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest)
                .with_output_size([2 * h, 2 * w])
                .with_align_corners(false),
        );
        kernels::conv2d(&self.conv, up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};
    use burn::tensor::TensorData;

    #[test]
    fn downsampling_halves_rounding_up() {
        let device = Device::flex();
        let down = Downsample::new(8, 1, &device);
        for (side, out) in [(7, 4), (8, 4), (14, 7)] {
            let x = NoiseRng::new(side as u64).normal_tensor([2, 8, side, side], &device);
            let y = down.forward(x.clone());
            assert_eq!(y.dims(), [2, 8, out, out]);
            let err = (y - down.conv.forward(x)).abs().max().into_scalar::<f32>();
            assert!(err < 1e-5, "{side}: {err}");
        }
    }

    #[test]
    fn upsampling_repeats_each_pixel_then_convolves() {
        let device = Device::flex();
        let up = Upsample::new(8, &device);
        let (c, h, w) = (8, 3, 5);
        let values = NoiseRng::new(9).normal_vec(c * h * w);
        let x = Tensor::<4>::from_data(TensorData::new(values.clone(), [1, c, h, w]), &device);
        // Nearest neighbour by hand: output pixel (y, x) reads input (y / 2, x / 2).
        let repeated: Vec<f32> = (0..c)
            .flat_map(|ch| {
                (0..2 * h).flat_map(move |y| (0..2 * w).map(move |x| (ch, y / 2, x / 2)))
            })
            .map(|(ch, y, x)| values[(ch * h + y) * w + x])
            .collect();
        let by_hand =
            Tensor::<4>::from_data(TensorData::new(repeated, [1, c, 2 * h, 2 * w]), &device);
        let y = up.forward(x);
        assert_eq!(y.dims(), [1, c, 2 * h, 2 * w]);
        let err = (y - up.conv.forward(by_hand))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(err < 1e-5, "{err}");
    }
}
