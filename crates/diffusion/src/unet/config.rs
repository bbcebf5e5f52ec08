//! The U-Net's hyper-parameters ([`UNetConfig`], with the `mnist` and `cifar10_ddpm` presets)
//! and the layer plan they describe: channels and resolution of every ResBlock, where attention
//! goes. The plan is computed once, both to validate a config (one-line errors naming the
//! field) and to build the model ([`UNetConfig::init`], in `model.rs`).

use burn::config::Config;

use super::TimeMode;
use crate::error::{Error, Result};

/// Configuration of a [`UNet`].
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Image channels (1 for grey, 3 for RGB); the output has the same.
    pub in_channels: usize,
    /// Image height and width (square images).
    pub resolution: usize,
    /// Base channel count `ch`; level i has `ch · channel_mults[i]` channels.
    pub base_channels: usize,
    /// Channel multiplier per level; one downsampling between consecutive levels.
    pub channel_mults: Vec<usize>,
    /// ResBlocks per level on the way down (one more on the way up).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Resolutions (feature-map sizes) at which self-attention follows each ResBlock; the
    /// middle block always has attention.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads (DDPM uses 1).
    #[config(default = 1)]
    pub num_heads: usize,
    /// Dropout probability in every ResBlock.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Number of classes for class conditioning (one extra null row is added for
    /// classifier-free guidance); `None` for an unconditional model.
    pub num_classes: Option<usize>,
    /// How time is injected into ResBlocks.
    #[config(default = "TimeMode::Film")]
    pub time_mode: TimeMode,
    /// GroupNorm groups (must divide every channel count).
    #[config(default = 32)]
    pub norm_groups: usize,
    /// GroupNorm ε.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

/// One ResBlock of the plan: channels in/out, resolution, and whether attention follows.
pub(super) struct BlockPlan {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) attention: bool,
}

/// The layer-by-layer plan the config describes (shared by validation and `init`).
pub(super) struct Plan {
    pub(super) down: Vec<(Vec<BlockPlan>, bool)>,
    pub(super) mid_channels: usize,
    pub(super) up: Vec<(Vec<BlockPlan>, bool)>,
    pub(super) out_channels: usize,
    pub(super) level_resolutions: Vec<usize>,
}

impl UNetConfig {
    /// The `mnist` preset: 28×28×1, ch 32, mults 1-2-2, attention at 7×7, 10 classes, FiLM
    /// (`ref_unet.py`'s `S` with `time_mode="film"`: 1,744,289 parameters).
    pub fn mnist() -> Self {
        Self::new(1, 28, 32, vec![1, 2, 2], vec![7]).with_num_classes(Some(10))
    }

    /// The `cifar10_ddpm` preset: Ho et al.'s CIFAR-10 model, 32×32×3, ch 128, mults 1-2-2-2,
    /// attention at 16×16, 2 ResBlocks, dropout 0.1, unconditional, time added (`add`):
    /// exactly 35,746,307 parameters.
    pub fn cifar10_ddpm() -> Self {
        Self::new(3, 32, 128, vec![1, 2, 2, 2], vec![16]).with_time_mode(TimeMode::Add)
    }

    /// Looks a preset up by name (`mnist`, `cifar10_ddpm`).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "mnist" => Ok(Self::mnist()),
            "cifar10_ddpm" => Ok(Self::cifar10_ddpm()),
            other => Err(Error::Config(format!(
                "unknown preset `{other}` (expected mnist or cifar10_ddpm)"
            ))),
        }
    }

    /// The U-Net's downsampling factor, 2^(levels − 1): what the image size must divide by.
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.channel_mults.len().clamp(1, 16) - 1)
    }

    /// The levels (0 = full resolution, 1 = half, …) at which this config attends: the
    /// resolution-independent form of `attention_resolutions` (the `mnist` preset: level 2,
    /// its lowest; `cifar10_ddpm`: level 1, 16×16 of 32×32).
    pub fn attention_levels(&self) -> Vec<usize> {
        let levels = self.channel_mults.len();
        self.attention_resolutions
            .iter()
            .filter_map(|&r| (0..levels).find(|&i| self.resolution >> i == r))
            .collect()
    }

    /// Attention at `levels` of this config's own resolution and level count, a level past the
    /// lowest becoming the lowest: how a preset's attention follows the image size (the
    /// `mnist` preset attends at 7×7 for 28×28 images and at 16×16 for 64×64 ones).
    pub fn with_attention_levels(mut self, levels: &[usize]) -> Self {
        let lowest = self.channel_mults.len().saturating_sub(1);
        let mut res: Vec<usize> = levels
            .iter()
            .map(|&l| self.resolution >> l.min(lowest))
            .collect();
        res.dedup();
        self.attention_resolutions = res;
        self
    }

    /// The shape of one image, `[in_channels, resolution, resolution]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.in_channels, self.resolution, self.resolution]
    }

    /// Width of the time/class embedding (4 · ch).
    pub fn emb_channels(&self) -> usize {
        4 * self.base_channels
    }

    pub(super) fn plan(&self) -> Result<Plan> {
        let err = |m: String| Err(Error::Config(m));
        if self.in_channels == 0 || self.base_channels == 0 || self.resolution == 0 {
            return err("in_channels, base_channels and resolution must be positive".into());
        }
        if self.channel_mults.is_empty() || self.channel_mults.contains(&0) {
            return err(format!(
                "channel_mults {:?} must be non-empty and positive",
                self.channel_mults
            ));
        }
        if self.num_res_blocks == 0 {
            return err("num_res_blocks must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return err(format!("dropout = {} must lie in [0, 1)", self.dropout));
        }
        if self.num_classes == Some(0) {
            return err("num_classes must be at least 1 (or null for unconditional)".into());
        }
        if self.norm_groups == 0 || !(self.norm_eps > 0.0) {
            return err("norm_groups must be ≥ 1 and norm_eps > 0".into());
        }
        if self.num_heads == 0 {
            return err("num_heads must be at least 1".into());
        }
        let levels = self.channel_mults.len();
        let factor = self.downsampling_factor();
        if self.resolution % factor != 0 {
            return err(format!(
                "resolution {} is not divisible by 2^{} = {factor}, needed for {levels} levels",
                self.resolution,
                levels - 1
            ));
        }
        let level_resolutions: Vec<usize> = (0..levels).map(|i| self.resolution >> i).collect();
        if let Some(r) = self
            .attention_resolutions
            .iter()
            .find(|r| !level_resolutions.contains(r))
        {
            return err(format!(
                "attention resolution {r} is not one of the level resolutions {level_resolutions:?}"
            ));
        }
        let ch = self.base_channels;
        let mut skips = vec![ch];
        let mut cur = ch;
        let mut down = Vec::new();
        for (i, &m) in self.channel_mults.iter().enumerate() {
            let attention = self.attention_resolutions.contains(&level_resolutions[i]);
            let mut blocks = Vec::new();
            for _ in 0..self.num_res_blocks {
                blocks.push(BlockPlan {
                    c_in: cur,
                    c_out: ch * m,
                    attention,
                });
                cur = ch * m;
                skips.push(cur);
            }
            let has_down = i + 1 != levels;
            if has_down {
                skips.push(cur);
            }
            down.push((blocks, has_down));
        }
        let mid_channels = cur;
        let mut up = Vec::new();
        for (i, &m) in self.channel_mults.iter().enumerate().rev() {
            let attention = self.attention_resolutions.contains(&level_resolutions[i]);
            let mut blocks = Vec::new();
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().expect("one skip per up block");
                blocks.push(BlockPlan {
                    c_in: cur + skip,
                    c_out: ch * m,
                    attention,
                });
                cur = ch * m;
            }
            up.push((blocks, i != 0));
        }
        debug_assert!(skips.is_empty());
        let plan = Plan {
            down,
            mid_channels,
            up,
            out_channels: cur,
            level_resolutions,
        };
        // GroupNorm and heads must divide every channel count they see.
        let all_blocks = plan.down.iter().chain(&plan.up).flat_map(|(b, _)| b);
        for b in all_blocks {
            for c in [b.c_in, b.c_out] {
                if c % self.norm_groups != 0 {
                    return err(format!(
                        "norm_groups = {} does not divide the channel count {c}",
                        self.norm_groups
                    ));
                }
            }
            if b.attention && b.c_out % self.num_heads != 0 {
                return err(format!(
                    "num_heads = {} does not divide the attention channel count {}",
                    self.num_heads, b.c_out
                ));
            }
        }
        if plan.mid_channels % self.num_heads != 0 {
            return err(format!(
                "num_heads = {} does not divide the middle channel count {}",
                self.num_heads, plan.mid_channels
            ));
        }
        Ok(plan)
    }

    /// Checks the config without allocating anything.
    pub fn validate(&self) -> Result<()> {
        self.plan().map(|_| ())
    }

    /// The feature-map size at each level.
    pub fn level_resolutions(&self) -> Result<Vec<usize>> {
        Ok(self.plan()?.level_resolutions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn attention_follows_the_image_size() {
        let mnist = UNetConfig::mnist();
        assert_eq!(mnist.attention_levels(), vec![2]);
        let cifar = UNetConfig::cifar10_ddpm();
        assert_eq!(cifar.attention_levels(), vec![1]);
        for (preset, size, want) in [
            (&mnist, 28, vec![7]),
            (&mnist, 32, vec![8]),
            (&mnist, 64, vec![16]),
            (&cifar, 32, vec![16]),
            (&cifar, 64, vec![32]),
        ] {
            let mut u = preset.clone();
            u.resolution = size;
            let u = u.with_attention_levels(&preset.attention_levels());
            assert_eq!(u.attention_resolutions, want, "{size}");
            u.validate().unwrap();
        }
        // Fewer levels than the preset's: the lowest one.
        let mut u = mnist.clone();
        u.channel_mults = vec![1, 2];
        let u = u.with_attention_levels(&mnist.attention_levels());
        assert_eq!(u.attention_resolutions, vec![14]);
    }

    #[test]
    fn bad_configs_are_errors() {
        let device = Device::flex();
        let cases = [
            (
                UNetConfig::mnist().with_norm_groups(24),
                "norm_groups = 24 does not divide",
            ),
            (
                UNetConfig {
                    attention_resolutions: vec![16],
                    ..UNetConfig::mnist()
                },
                "attention resolution 16",
            ),
            (
                UNetConfig::new(1, 30, 32, vec![1, 2, 2], vec![]),
                "resolution 30 is not divisible",
            ),
            (
                UNetConfig {
                    channel_mults: vec![],
                    ..UNetConfig::mnist()
                },
                "channel_mults",
            ),
            (UNetConfig::mnist().with_num_heads(5), "num_heads = 5"),
            (UNetConfig::mnist().with_dropout(1.0), "dropout"),
            (UNetConfig::mnist().with_num_classes(Some(0)), "num_classes"),
        ];
        for (cfg, expect) in cases {
            let err = cfg.init(&device).unwrap_err().to_string();
            assert!(err.contains(expect), "{err} does not mention {expect}");
        }
        assert!(UNetConfig::preset("imagenet").is_err());
    }
}
