//! The residual block of the DDPM U-Net, with time conditioning.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::{Device, Tensor};
use flex_kernels as kernels;
use serde::{Deserialize, Serialize};

use super::resample::conv3x3;

/// How the time (and class) embedding enters a [`ResBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    /// FiLM: h = GN(h) · (1 + scale) + shift after the second GroupNorm, with (scale, shift)
    /// projected from the embedding (projection 2× wider than `add`).
    #[default]
    Film,
    /// DDPM's original: h = GN(h + proj(emb)), the projection added before the second
    /// GroupNorm.
    Add,
}

/// Configuration of a [`ResBlock`].
#[derive(Config, Debug)]
pub struct ResBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time/class embedding.
    pub emb_channels: usize,
    /// Dropout probability before the second convolution.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// How the embedding is injected.
    #[config(default = "TimeMode::Film")]
    pub time_mode: TimeMode,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
    /// GroupNorm ε.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

impl ResBlockConfig {
    /// Creates the block. The second convolution starts at zero, so the block starts as its
    /// shortcut (DDPM initialises it with scale 1e-10).
    pub fn init(&self, device: &Device) -> ResBlock {
        let (ci, co) = (self.in_channels, self.out_channels);
        let norm = |c| {
            GroupNormConfig::new(self.norm_groups, c)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let proj_width = match self.time_mode {
            TimeMode::Film => 2 * co,
            TimeMode::Add => co,
        };
        ResBlock {
            norm1: norm(ci),
            conv1: conv3x3(ci, co, 1, device),
            emb_proj: LinearConfig::new(self.emb_channels, proj_width).init(device),
            norm2: norm(co),
            dropout: DropoutConfig::new(self.dropout).init(),
            conv2: Conv2dConfig::new([co, co], [3, 3])
                .with_padding(burn::nn::PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            skip: (ci != co).then(|| Conv2dConfig::new([ci, co], [1, 1]).init(device)),
            time_mode: self.time_mode,
        }
    }
}

/// GN → SiLU → Conv3×3 → (time) → GN → (FiLM) → SiLU → Dropout → Conv3×3, plus a shortcut
/// (1×1 conv when the channel count changes).
#[derive(Module, Debug)]
pub struct ResBlock {
    /// First GroupNorm.
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Projection of SiLU(embedding) to one bias (`add`) or a scale and shift (`film`) per
    /// channel.
    pub emb_proj: Linear,
    /// Second GroupNorm.
    pub norm2: GroupNorm,
    /// Dropout (active only while training on an autodiff device).
    pub dropout: Dropout,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// 1×1 shortcut when `in_channels != out_channels`.
    pub skip: Option<Conv2d>,
    /// How the embedding is injected.
    #[module(skip)]
    pub time_mode: TimeMode,
}

impl ResBlock {
    /// Applies the block.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, h, w]`; `emb`: `[batch, emb_channels]` (already passed
    ///   through SiLU by the caller, shared by every block).
    /// - output: `[batch, out_channels, h, w]`.
    pub fn forward(&self, x: Tensor<4>, emb_silu: Tensor<2>) -> Tensor<4> {
        let h = kernels::conv2d(
            &self.conv1,
            kernels::group_norm_silu(&self.norm1, x.clone()),
        );
        let [b, c, _, _] = h.dims();
        let e = self.emb_proj.forward(emb_silu);
        // SiLU(GN(h + e)), or SiLU(FiLM(GN(h))) with FiLM and SiLU as one step.
        let h = match self.time_mode {
            TimeMode::Add => kernels::group_norm_silu(&self.norm2, h + e.reshape([b, c, 1, 1])),
            TimeMode::Film => {
                let e = e.reshape([b, 2 * c, 1, 1]);
                let scale = e.clone().narrow(1, 0, c);
                let shift = e.narrow(1, c, c);
                kernels::film_silu(kernels::group_norm(&self.norm2, h), scale, shift)
            }
        };
        let h = kernels::conv2d(&self.conv2, kernels::dropout(&self.dropout, h));
        match &self.skip {
            Some(skip) => kernels::add(kernels::conv2d(skip, x), h),
            None => kernels::add(x, h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};
    use crate::unet::randomize;
    use burn::tensor::activation::silu;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn starts_as_its_shortcut() {
        // conv2 is zero-initialised: the block is x (same channels) or the 1×1 skip of x.
        let device = Device::flex();
        let mut rng = NoiseRng::new(1);
        for (ci, co) in [(32, 32), (32, 64)] {
            for mode in [TimeMode::Film, TimeMode::Add] {
                let block = ResBlockConfig::new(ci, co, 16)
                    .with_time_mode(mode)
                    .init(&device);
                let x = rng.normal_tensor([2, ci, 6, 6], &device);
                let emb = rng.normal_tensor([2, 16], &device);
                let y = block.forward(x.clone(), emb);
                let expected = match &block.skip {
                    Some(skip) => skip.forward(x),
                    None => x,
                };
                assert!(max_diff(y, expected) < 1e-6, "{ci} → {co}, {mode:?}");
            }
        }
    }

    #[test]
    fn equals_the_formula_with_burns_ops() {
        // GN → SiLU → conv → (FiLM after GN2 | add before GN2) → SiLU → conv, plus the skip.
        let device = Device::flex();
        let mut rng = NoiseRng::new(2);
        for mode in [TimeMode::Film, TimeMode::Add] {
            let block = randomize(
                ResBlockConfig::new(32, 64, 16)
                    .with_time_mode(mode)
                    .init(&device),
                3,
                0.1,
            );
            let x = rng.normal_tensor([2, 32, 7, 7], &device);
            let emb = rng.normal_tensor([2, 16], &device);
            let h = block.conv1.forward(silu(block.norm1.forward(x.clone())));
            let e = block.emb_proj.forward(emb.clone());
            let h = match mode {
                TimeMode::Add => silu(block.norm2.forward(h + e.reshape([2, 64, 1, 1]))),
                TimeMode::Film => {
                    let e = e.reshape([2, 128, 1, 1]);
                    let (scale, shift) = (e.clone().narrow(1, 0, 64), e.narrow(1, 64, 64));
                    silu(block.norm2.forward(h) * scale.add_scalar(1.0) + shift)
                }
            };
            let expected = block.skip.as_ref().unwrap().forward(x.clone()) + block.conv2.forward(h);
            let y = block.forward(x, emb);
            let scale = expected.clone().abs().max().into_scalar::<f32>();
            assert!(max_diff(y, expected) < 1e-4 * scale, "{mode:?}");
        }
    }
}
