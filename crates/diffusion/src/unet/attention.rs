//! Multi-head self-attention over the pixels of a feature map (DDPM's `AttnBlock`).

use crate::{conv2d, group_norm};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};

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
        let [b, c, h, w] = x.dims();
        let (heads, n) = (self.num_heads, h * w);
        let d = c / heads;
        let qkv = conv2d::forward(&self.qkv, group_norm::forward(&self.norm, x.clone()));
        // [B, 3C, H, W] → [B, 3, heads, d, HW] → three [B, heads, HW, d].
        let qkv = qkv.reshape([b * 3, heads, d, n]).swap_dims(2, 3);
        let mut parts = qkv.reshape([b, 3, heads, n, d]).chunk(3, 1).into_iter();
        let mut next = || parts.next().expect("q, k, v").reshape([b, heads, n, d]);
        let (q, k, v) = (next(), next(), next());
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        // [B, heads, HW, d] → [B, heads, d, HW] → [B, C, H, W].
        let out = out.swap_dims(2, 3).reshape([b, c, h, w]);
        x + conv2d::forward(&self.proj, out)
    }
}
