//! Multi-head self-attention over the pixels of a feature map (DDPM's `AttnBlock`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer};
use burn::tensor::{Device, Tensor};
use flex_kernels as kernels;

/// Configuration of an [`AttentionBlock`].
#[derive(Config, Debug)]
pub struct AttentionBlockConfig {
    /// Channels C of the feature map.
    pub channels: usize,
    /// Number of heads; must divide `channels` (head size C / heads).
    #[config(default = 1)]
    pub num_heads: usize,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
    /// GroupNorm ε.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

impl AttentionBlockConfig {
    /// Creates the block; the output projection starts at zero so the block starts as the
    /// identity (DDPM initialises it with scale 1e-10).
    pub fn init(&self, device: &Device) -> AttentionBlock {
        let c = self.channels;
        AttentionBlock {
            norm: GroupNormConfig::new(self.norm_groups, c)
                .with_epsilon(self.norm_eps)
                .init(device),
            qkv: Conv2dConfig::new([c, 3 * c], [1, 1]).init(device),
            proj: Conv2dConfig::new([c, c], [1, 1])
                .with_initializer(Initializer::Zeros)
                .init(device),
            num_heads: self.num_heads,
        }
    }
}

/// x + proj(softmax(q kᵀ / √d) v), with q, k, v = 1×1 conv of GroupNorm(x), per head.
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// Pre-normalisation.
    pub norm: GroupNorm,
    /// 1×1 conv to queries, keys and values (C → 3C, in that order).
    pub qkv: Conv2d,
    /// 1×1 output projection.
    pub proj: Conv2d,
    /// Number of heads.
    pub num_heads: usize,
}

impl AttentionBlock {
    /// Applies the block.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`; output: the same.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let qkv = kernels::conv2d(&self.qkv, kernels::group_norm(&self.norm, x.clone()));
        let out = kernels::self_attention(qkv, self.num_heads);
        kernels::add(x, kernels::conv2d(&self.proj, out))
    }
}
