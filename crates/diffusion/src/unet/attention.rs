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
    /// Whether the block normalises its input (diffusers' mid-block attention may not).
    #[config(default = true)]
    pub normalize: bool,
}

impl AttentionBlockConfig {
    /// Creates the block; the output projection starts at zero so the block starts as the
    /// identity (DDPM initialises it with scale 1e-10).
    pub fn init(&self, device: &Device) -> AttentionBlock {
        let c = self.channels;
        AttentionBlock {
            norm: self.normalize.then(|| {
                GroupNormConfig::new(self.norm_groups, c)
                    .with_epsilon(self.norm_eps)
                    .init(device)
            }),
            qkv: Conv2dConfig::new([c, 3 * c], [1, 1]).init(device),
            proj: Conv2dConfig::new([c, c], [1, 1])
                .with_initializer(Initializer::Zeros)
                .init(device),
            num_heads: self.num_heads,
        }
    }
}

/// x + proj(softmax(q kᵀ / √d) v), with q, k, v = 1×1 conv of GroupNorm(x) (or of x), per
/// head of d channels.
#[derive(Module, Debug)]
pub struct AttentionBlock {
    /// Pre-normalisation (absent: the block attends over its input as it is).
    pub norm: Option<GroupNorm>,
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
        let normed = match &self.norm {
            Some(norm) => kernels::group_norm(norm, x.clone()),
            None => x.clone(),
        };
        let qkv = kernels::conv2d(&self.qkv, normed);
        let out = kernels::self_attention(qkv, self.num_heads);
        kernels::add(x, kernels::conv2d(&self.proj, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};
    use crate::unet::randomize;
    use burn::tensor::activation::softmax;

    #[test]
    fn starts_as_the_identity() {
        // The output projection is zero-initialised.
        let device = Device::flex();
        let block = AttentionBlockConfig::new(32)
            .with_num_heads(2)
            .init(&device);
        let x = NoiseRng::new(1).normal_tensor([2, 32, 7, 7], &device);
        let d = (block.forward(x.clone()) - x)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn equals_softmax_attention_per_head() {
        // x + proj(concat_h softmax(q_hᵀ k_h / √d) applied to v_h), q, k, v from the qkv conv.
        let device = Device::flex();
        let (b, c, heads, side) = (2, 32, 2, 5);
        let (n, d) = (side * side, c / heads);
        let block = randomize(
            AttentionBlockConfig::new(c)
                .with_num_heads(heads)
                .init(&device),
            4,
            0.2,
        );
        let x = NoiseRng::new(5).normal_tensor([b, c, side, side], &device);
        let qkv = block
            .qkv
            .forward(block.norm.as_ref().unwrap().forward(x.clone()))
            .reshape([b, 3 * c, n]);
        let part = |which: usize, h: usize| qkv.clone().narrow(1, which * c + h * d, d);
        let heads_out: Vec<Tensor<3>> = (0..heads)
            .map(|h| {
                let (q, k, v) = (part(0, h), part(1, h), part(2, h));
                let scores = q.swap_dims(1, 2).matmul(k).div_scalar((d as f64).sqrt());
                v.matmul(softmax(scores, 2).swap_dims(1, 2))
            })
            .collect();
        let out = Tensor::cat(heads_out, 1).reshape([b, c, side, side]);
        let expected = x.clone() + block.proj.forward(out);
        let y = block.forward(x);
        let scale = expected.clone().abs().max().into_scalar::<f32>();
        let err = (y - expected).abs().max().into_scalar::<f32>();
        assert!(err < 1e-4 * scale, "{err}");
    }
}
