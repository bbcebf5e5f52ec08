//! The U-Net's hyper-parameters ([`UNetConfig`], with the `mnist` and `cifar10_ddpm` presets)
//! and the layer plan they describe: channels and resolution of every ResBlock, where attention
//! goes. The plan is computed once, both to validate a config (one-line errors naming the
//! field) and to build the model ([`UNetConfig::init`], in `model.rs`).

use serde::{Deserialize, Serialize};

use super::TimeMode;
use crate::error::{Error, Result};

/// Configuration of a [`UNet`](super::UNet).
///
/// The fields up to `norm_eps` describe Ho et al.'s U-Net; the optional ones after them are the
/// switches in which diffusers' `UNet2DModel` differs (absent: Ho et al.'s choice), so every
/// `UNet2DModel` with positional time embedding and `DownBlock2D` / `AttnDownBlock2D` /
/// `UpBlock2D` / `AttnUpBlock2D` blocks is expressible, and configs written before they
/// existed load unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image channels (1 for grey, 3 for RGB); the output has the same.
    pub in_channels: usize,
    /// Image height and width (square images).
    pub resolution: usize,
    /// Base channel count `ch`: the width of `conv_in`'s output and of the sinusoidal time
    /// embedding; level i has `ch · channel_mults[i]` channels.
    pub base_channels: usize,
    /// Channel multiplier per level; one downsampling between consecutive levels. Empty when
    /// `block_out_channels` gives the channels instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_mults: Vec<usize>,
    /// Resolutions (feature-map sizes) at which self-attention follows each ResBlock.
    pub attention_resolutions: Vec<usize>,
    /// Number of classes for class conditioning (one extra null row is added for
    /// classifier-free guidance); `None` for an unconditional model.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// ResBlocks per level on the way down (one more on the way up).
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    /// Attention heads (DDPM uses 1); `attention_head_dim` overrides it.
    #[serde(default = "one")]
    pub num_heads: usize,
    /// Dropout probability in every ResBlock.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// How time is injected into ResBlocks.
    #[serde(default)]
    pub time_mode: TimeMode,
    /// GroupNorm groups (must divide every channel count).
    #[serde(default = "default_norm_groups")]
    pub norm_groups: usize,
    /// GroupNorm ε.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Channels per level, instead of `base_channels · channel_mults` (diffusers'
    /// `block_out_channels`; the first must equal `base_channels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_out_channels: Option<Vec<usize>>,
    /// Resolutions with attention on the way up; absent: `attention_resolutions` (diffusers'
    /// `AttnUpBlock2D`s may sit elsewhere than its `AttnDownBlock2D`s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_attention_resolutions: Option<Vec<usize>>,
    /// Whether the middle block has attention between its ResBlocks; absent: true (diffusers'
    /// `add_attention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_attention: Option<bool>,
    /// Channels per attention head, instead of a fixed `num_heads`: each attention block has
    /// channels / `attention_head_dim` heads (diffusers' `attention_head_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups of the middle attention's pre-normalisation; absent: `norm_groups`;
    /// 0: none (diffusers' mid-block attention with `resnet_time_scale_shift = "scale_shift"`
    /// and no `attn_norm_num_groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid_attention_norm_groups: Option<usize>,
    /// Time embedding as (cos, sin) instead of (sin, cos); absent: false, as DDPM (diffusers'
    /// `flip_sin_to_cos`, default true there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flip_sin_to_cos: Option<bool>,
    /// Shift s of the frequencies f_i = exp(−ln(10⁴) · i / (h − s)); absent: 1, as DDPM
    /// (diffusers' `freq_shift`, default 0 there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freq_shift: Option<f64>,
    /// Padding of the strided downsampling conv: 1 on every side, or 0 with one row and column
    /// of zeros added at the bottom and right (TensorFlow's `SAME`, as google/ddpm-* use);
    /// absent: 1 (diffusers' `downsample_padding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downsample_padding: Option<usize>,
    /// Width of the time/class embedding; absent: 4 · `base_channels` (diffusers'
    /// `time_embedding_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_embedding_dim: Option<usize>,
}

fn default_num_res_blocks() -> usize {
    2
}
fn one() -> usize {
    1
}
fn default_dropout() -> f64 {
    0.1
}
fn default_norm_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-6
}

/// Builder methods, as Burn's `Config` derive writes them.
macro_rules! with {
    ($($(#[$doc:meta])* $name:ident: $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

impl UNetConfig {
    /// A config with Ho et al.'s defaults for everything not given.
    pub fn new(
        in_channels: usize,
        resolution: usize,
        base_channels: usize,
        channel_mults: Vec<usize>,
        attention_resolutions: Vec<usize>,
    ) -> Self {
        Self {
            in_channels,
            resolution,
            base_channels,
            channel_mults,
            num_res_blocks: default_num_res_blocks(),
            attention_resolutions,
            num_heads: 1,
            dropout: default_dropout(),
            num_classes: None,
            time_mode: TimeMode::default(),
            norm_groups: default_norm_groups(),
            norm_eps: default_norm_eps(),
            block_out_channels: None,
            up_attention_resolutions: None,
            mid_attention: None,
            attention_head_dim: None,
            mid_attention_norm_groups: None,
            flip_sin_to_cos: None,
            freq_shift: None,
            downsample_padding: None,
            time_embedding_dim: None,
        }
    }

    with! {
        /// Sets `num_res_blocks`.
        with_num_res_blocks: num_res_blocks: usize;
        /// Sets `num_heads`.
        with_num_heads: num_heads: usize;
        /// Sets `dropout`.
        with_dropout: dropout: f64;
        /// Sets `num_classes`.
        with_num_classes: num_classes: Option<usize>;
        /// Sets `time_mode`.
        with_time_mode: time_mode: TimeMode;
        /// Sets `norm_groups`.
        with_norm_groups: norm_groups: usize;
        /// Sets `norm_eps`.
        with_norm_eps: norm_eps: f64;
    }
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
        1 << (self.num_levels().clamp(1, 16) - 1)
    }

    /// The number of levels (resolutions).
    pub fn num_levels(&self) -> usize {
        match &self.block_out_channels {
            Some(c) => c.len(),
            None => self.channel_mults.len(),
        }
    }

    /// The channels at each level: `block_out_channels`, else `base_channels · channel_mults`.
    pub fn level_channels(&self) -> Vec<usize> {
        match &self.block_out_channels {
            Some(c) => c.clone(),
            None => self.level_channels_from_mults(),
        }
    }

    /// The resolutions with attention on the way up.
    pub fn up_attention_resolutions(&self) -> &[usize] {
        self.up_attention_resolutions
            .as_deref()
            .unwrap_or(&self.attention_resolutions)
    }

    /// Heads of an attention block over `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        match self.attention_head_dim {
            Some(d) if d > 0 => channels / d,
            _ => self.num_heads,
        }
    }

    /// Whether the middle block attends.
    pub fn has_mid_attention(&self) -> bool {
        self.mid_attention.unwrap_or(true)
    }

    /// The levels (0 = full resolution, 1 = half, …) at which this config attends: the
    /// resolution-independent form of `attention_resolutions` (the `mnist` preset: level 2,
    /// its lowest; `cifar10_ddpm`: level 1, 16×16 of 32×32).
    pub fn attention_levels(&self) -> Vec<usize> {
        let levels = self.num_levels();
        self.attention_resolutions
            .iter()
            .filter_map(|&r| (0..levels).find(|&i| self.resolution >> i == r))
            .collect()
    }

    /// Attention at `levels` of this config's own resolution and level count, a level past the
    /// lowest becoming the lowest: how a preset's attention follows the image size (the
    /// `mnist` preset attends at 7×7 for 28×28 images and at 16×16 for 64×64 ones).
    pub fn with_attention_levels(mut self, levels: &[usize]) -> Self {
        let lowest = self.num_levels().saturating_sub(1);
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

    /// Width of the time/class embedding (4 · ch unless `time_embedding_dim` says otherwise).
    pub fn emb_channels(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.base_channels)
    }

    pub(super) fn plan(&self) -> Result<Plan> {
        let err = |m: String| Err(Error::Config(m));
        if self.in_channels == 0 || self.base_channels == 0 || self.resolution == 0 {
            return err("in_channels, base_channels and resolution must be positive".into());
        }
        match &self.block_out_channels {
            None if self.channel_mults.is_empty() || self.channel_mults.contains(&0) => {
                return err(format!(
                    "channel_mults {:?} must be non-empty and positive",
                    self.channel_mults
                ));
            }
            None => {}
            Some(c) if c.is_empty() || c.contains(&0) => {
                return err(format!(
                    "block_out_channels {c:?} must be non-empty and positive"
                ));
            }
            Some(c) if c[0] != self.base_channels => {
                return err(format!(
                    "block_out_channels[0] = {} must equal base_channels = {}",
                    c[0], self.base_channels
                ));
            }
            Some(c) if !self.channel_mults.is_empty() && self.level_channels_from_mults() != *c => {
                return err(format!(
                    "channel_mults {:?} and block_out_channels {c:?} disagree (give one)",
                    self.channel_mults
                ));
            }
            Some(_) => {}
        }
        if self.time_embedding_dim == Some(0) {
            return err("time_embedding_dim must be positive".into());
        }
        if self.attention_head_dim == Some(0) {
            return err("attention_head_dim must be positive".into());
        }
        if !matches!(self.downsample_padding, None | Some(0) | Some(1)) {
            return err(format!(
                "downsample_padding = {} must be 0 or 1",
                self.downsample_padding.unwrap_or_default()
            ));
        }
        let shift = self.freq_shift.unwrap_or(1.0);
        let half = self.base_channels / 2;
        if !shift.is_finite() || (half as f64 - shift <= 0.0 && half > 1) {
            return err(format!(
                "freq_shift = {shift} must be finite and below half the time-embedding width ({half})"
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
        let levels = self.num_levels();
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
            .chain(self.up_attention_resolutions())
            .find(|r| !level_resolutions.contains(r))
        {
            return err(format!(
                "attention resolution {r} is not one of the level resolutions {level_resolutions:?}"
            ));
        }
        let channels = self.level_channels();
        let ch = self.base_channels;
        let mut skips = vec![ch];
        let mut cur = ch;
        let mut down = Vec::new();
        for (i, &c) in channels.iter().enumerate() {
            let attention = self.attention_resolutions.contains(&level_resolutions[i]);
            let mut blocks = Vec::new();
            for _ in 0..self.num_res_blocks {
                blocks.push(BlockPlan {
                    c_in: cur,
                    c_out: c,
                    attention,
                });
                cur = c;
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
        for (i, &c) in channels.iter().enumerate().rev() {
            let attention = self
                .up_attention_resolutions()
                .contains(&level_resolutions[i]);
            let mut blocks = Vec::new();
            for _ in 0..=self.num_res_blocks {
                let skip = skips.pop().expect("one skip per up block");
                blocks.push(BlockPlan {
                    c_in: cur + skip,
                    c_out: c,
                    attention,
                });
                cur = c;
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
            if b.attention {
                self.check_heads(b.c_out, "attention")?;
            }
        }
        if self.has_mid_attention() {
            self.check_heads(plan.mid_channels, "middle")?;
            match self.mid_attention_norm_groups {
                Some(g) if g != 0 && plan.mid_channels % g != 0 => {
                    return err(format!(
                        "mid_attention_norm_groups = {g} does not divide the middle channel count {}",
                        plan.mid_channels
                    ));
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    /// The heads must divide the channels of every attention block.
    fn check_heads(&self, channels: usize, which: &str) -> Result<()> {
        let fail = |what: String| {
            Err(Error::Config(format!(
                "{what} does not divide the {which} channel count {channels}"
            )))
        };
        match self.attention_head_dim {
            Some(d) if channels % d != 0 => fail(format!("attention_head_dim = {d}")),
            Some(_) => Ok(()),
            None if channels % self.num_heads != 0 => {
                fail(format!("num_heads = {}", self.num_heads))
            }
            None => Ok(()),
        }
    }

    fn level_channels_from_mults(&self) -> Vec<usize> {
        self.channel_mults
            .iter()
            .map(|m| self.base_channels * m)
            .collect()
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
