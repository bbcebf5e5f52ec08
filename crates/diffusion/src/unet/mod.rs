//! The DDPM U-Net (Ho et al. 2020, Appendix B; the PixelCNN++ backbone), class-conditional
//! for classifier-free guidance.
//!
//! sinusoidal t-embedding → Linear(ch, 4ch) → SiLU → Linear(4ch, 4ch) (+ class embedding with a
//! learned null row) → conv_in → per level: `num_res_blocks` [`ResBlock`]s (+ [`AttentionBlock`]
//! where the resolution is listed) and a strided-conv [`Downsample`] (not on the last level) →
//! middle ResBlock, attention, ResBlock → up path with `num_res_blocks + 1` ResBlocks per level
//! on the concatenated skips and nearest + conv [`Upsample`] → GroupNorm → SiLU → conv_out.
//!
//! The same design, parameter for parameter, is `../shared/bench/ref_unet.py`.

mod attention;
mod res_block;
mod resample;
mod time_embedding;

pub use attention::{AttentionBlock, AttentionBlockConfig};
pub use res_block::{ResBlock, ResBlockConfig, TimeMode};
pub use resample::{Downsample, Upsample};
pub use time_embedding::{timestep_embedding, MAX_PERIOD};

use crate::silu::silu;
use crate::{conv2d, group_norm};
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::sampler::Denoiser;

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
struct BlockPlan {
    c_in: usize,
    c_out: usize,
    attention: bool,
}

/// The layer-by-layer plan the config describes (shared by validation and `init`).
struct Plan {
    down: Vec<(Vec<BlockPlan>, bool)>,
    mid_channels: usize,
    up: Vec<(Vec<BlockPlan>, bool)>,
    out_channels: usize,
    level_resolutions: Vec<usize>,
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

    /// Width of the time/class embedding (4 · ch).
    pub fn emb_channels(&self) -> usize {
        4 * self.base_channels
    }

    fn plan(&self) -> Result<Plan> {
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
        let factor = 1usize << (levels - 1);
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

    /// Creates the model on `device`; an inconsistent config is an [`Error::Config`].
    pub fn init(&self, device: &Device) -> Result<UNet> {
        let plan = self.plan()?;
        let emb = self.emb_channels();
        let res_block = |b: &BlockPlan| {
            ResBlockConfig::new(b.c_in, b.c_out, emb)
                .with_dropout(self.dropout)
                .with_time_mode(self.time_mode)
                .with_norm_groups(self.norm_groups)
                .with_norm_eps(self.norm_eps)
                .init(device)
        };
        let attn = |c: usize| {
            AttentionBlockConfig::new(c)
                .with_num_heads(self.num_heads)
                .with_norm_groups(self.norm_groups)
                .with_norm_eps(self.norm_eps)
                .init(device)
        };
        let level = |(blocks, resample): &(Vec<BlockPlan>, bool), up: bool| Level {
            blocks: blocks.iter().map(res_block).collect(),
            attentions: blocks
                .iter()
                .map(|b| b.attention.then(|| attn(b.c_out)))
                .collect(),
            downsample: (!up && *resample)
                .then(|| Downsample::new(blocks.last().unwrap().c_out, device)),
            upsample: (up && *resample)
                .then(|| Upsample::new(blocks.last().unwrap().c_out, device)),
        };
        let mid = BlockPlan {
            c_in: plan.mid_channels,
            c_out: plan.mid_channels,
            attention: true,
        };
        Ok(UNet {
            time_embed_1: LinearConfig::new(self.base_channels, emb).init(device),
            time_embed_2: LinearConfig::new(emb, emb).init(device),
            class_embed: self
                .num_classes
                .map(|n| EmbeddingConfig::new(n + 1, emb).init(device)),
            conv_in: Conv2dConfig::new([self.in_channels, self.base_channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            down: plan.down.iter().map(|l| level(l, false)).collect(),
            mid_block_1: res_block(&mid),
            mid_attention: attn(plan.mid_channels),
            mid_block_2: res_block(&mid),
            up: plan.up.iter().map(|l| level(l, true)).collect(),
            norm_out: GroupNormConfig::new(self.norm_groups, plan.out_channels)
                .with_epsilon(self.norm_eps)
                .init(device),
            // Zero-initialised, so the untrained model predicts ε̂ = 0 (DDPM: scale 1e-10).
            conv_out: Conv2dConfig::new([plan.out_channels, self.in_channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            config: self.clone(),
        })
    }
}

/// One resolution level: ResBlocks, their optional attention, and the resampler.
#[derive(Module, Debug)]
pub struct Level {
    /// The ResBlocks.
    pub blocks: Vec<ResBlock>,
    /// Attention after each ResBlock, where the resolution is listed.
    pub attentions: Vec<Option<AttentionBlock>>,
    /// Strided conv to the next level (down path).
    pub downsample: Option<Downsample>,
    /// Nearest + conv to the next level (up path).
    pub upsample: Option<Upsample>,
}

/// The U-Net; build it with [`UNetConfig::init`].
#[derive(Module, Debug)]
pub struct UNet {
    /// First layer of the time-embedding MLP (ch → 4ch).
    pub time_embed_1: Linear,
    /// Second layer of the time-embedding MLP (4ch → 4ch).
    pub time_embed_2: Linear,
    /// Class embedding with `num_classes + 1` rows; the last row is the learned null class.
    pub class_embed: Option<Embedding>,
    /// Input 3×3 convolution.
    pub conv_in: Conv2d,
    /// Down path, one entry per level.
    pub down: Vec<Level>,
    /// Middle ResBlock before attention.
    pub mid_block_1: ResBlock,
    /// Middle self-attention.
    pub mid_attention: AttentionBlock,
    /// Middle ResBlock after attention.
    pub mid_block_2: ResBlock,
    /// Up path, from the lowest resolution to the highest.
    pub up: Vec<Level>,
    /// Output GroupNorm.
    pub norm_out: GroupNorm,
    /// Output 3×3 convolution.
    pub conv_out: Conv2d,
    /// The configuration the model was built from.
    #[module(skip)]
    pub config: UNetConfig,
}

impl UNet {
    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Replaces every parameter with seeded noise of standard deviation `std` from the portable
    /// [`NoiseRng`](crate::NoiseRng), so the result is identical on every platform. For tests
    /// and benchmarks that need a model with no zero-initialised layers before any is trained.
    pub fn randomize(self, seed: u64, std: f64) -> Self {
        struct Randomise(crate::NoiseRng, f64);
        impl burn::module::ModuleMapper for Randomise {
            fn map_float<const D: usize>(
                &mut self,
                param: burn::module::Param<Tensor<D>>,
            ) -> burn::module::Param<Tensor<D>> {
                let Self(rng, std) = self;
                param.map(|t| rng.normal_tensor(t.dims(), &t.device()).mul_scalar(*std))
            }
        }
        self.map(&mut Randomise(crate::NoiseRng::new(seed), std))
    }

    /// Index of the null (unconditional) class, if the model is class-conditional.
    pub fn null_class(&self) -> Option<usize> {
        self.config.num_classes
    }

    /// The combined time (+ class) embedding, after the SiLU every ResBlock applies to it.
    fn embedding(
        &self,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
        device: &Device,
    ) -> Tensor<2> {
        let b = timesteps.len();
        let t = timestep_embedding(timesteps, self.config.base_channels, device);
        let mut emb = self
            .time_embed_2
            .forward(silu(self.time_embed_1.forward(t)));
        if let (Some(class_embed), Some(n)) = (&self.class_embed, self.config.num_classes) {
            let labels: Vec<i64> = match class_labels {
                Some(l) => {
                    assert_eq!(l.len(), b, "one class label per sample");
                    l.iter()
                        .map(|&k| {
                            assert!(k <= n, "class label {k} > null class {n}");
                            k as i64
                        })
                        .collect()
                }
                None => vec![n as i64; b],
            };
            let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, 1]), device);
            emb = emb
                + class_embed
                    .forward(labels)
                    .reshape([b, self.config.emb_channels()]);
        }
        silu(emb)
    }

    /// Predicts the model output (ε or v) for noisy images at the given timesteps.
    ///
    /// `timesteps` and `class_labels` live on the host: the sinusoidal embedding is computed
    /// there in `f64` so every backend sees identical inputs. A label equal to `num_classes` is
    /// the null class; `None` means null for every sample.
    ///
    /// # Shapes
    /// - `x`: `[batch, in_channels, resolution, resolution]`; `timesteps`, `class_labels`:
    ///   `batch` values.
    /// - output: like `x`.
    pub fn forward(
        &self,
        x: Tensor<4>,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
    ) -> Tensor<4> {
        let [b, _, _, _] = x.dims();
        assert_eq!(timesteps.len(), b, "one timestep per sample");
        let emb = self.embedding(timesteps, class_labels, &x.device());
        let mut h = conv2d::forward(&self.conv_in, x);
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for (block, attn) in level.blocks.iter().zip(&level.attentions) {
                h = block.forward(h, emb.clone());
                if let Some(attn) = attn {
                    h = attn.forward(h);
                }
                skips.push(h.clone());
            }
            if let Some(down) = &level.downsample {
                h = down.forward(h);
                skips.push(h.clone());
            }
        }
        h = self.mid_block_1.forward(h, emb.clone());
        h = self.mid_attention.forward(h);
        h = self.mid_block_2.forward(h, emb.clone());
        for level in &self.up {
            for (block, attn) in level.blocks.iter().zip(&level.attentions) {
                let skip = skips.pop().expect("one skip per up block");
                h = block.forward(crate::elementwise::cat_channels(h, skip), emb.clone());
                if let Some(attn) = attn {
                    h = attn.forward(h);
                }
            }
            if let Some(up) = &level.upsample {
                h = up.forward(h);
            }
        }
        conv2d::forward(&self.conv_out, group_norm::forward_silu(&self.norm_out, h))
    }
}

impl Denoiser for UNet {
    fn num_classes(&self) -> Option<usize> {
        self.config.num_classes
    }

    fn predict(
        &self,
        x: Tensor<4>,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
    ) -> Tensor<4> {
        self.forward(x, timesteps, class_labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_pytorch_reference() {
        // ../shared/bench/reference-results-2026-11-28.json, "params" (ref_unet.py).
        let device = Device::flex();
        let count = |c: UNetConfig| c.init(&device).unwrap().num_params();
        assert_eq!(count(UNetConfig::cifar10_ddpm()), 35_746_307);
        assert_eq!(
            count(UNetConfig::cifar10_ddpm().with_time_mode(TimeMode::Film)),
            38_307_203
        );
        assert_eq!(
            count(UNetConfig::cifar10_ddpm().with_num_classes(Some(10))),
            35_751_939
        );
        assert_eq!(count(UNetConfig::mnist()), 1_744_289);
        assert_eq!(
            count(UNetConfig::mnist().with_time_mode(TimeMode::Add)),
            1_624_577
        );
        let m = UNetConfig::new(3, 32, 64, vec![1, 2, 2, 2], vec![16]).with_num_classes(Some(10));
        assert_eq!(count(m.clone().with_time_mode(TimeMode::Add)), 8_954_883);
        assert_eq!(count(m), 9_596_355);
    }

    #[test]
    fn output_shape_equals_input_shape() {
        let device = Device::flex();
        let small = |res: usize, c: usize| {
            UNetConfig::new(c, res, 32, vec![1, 2], vec![res / 2])
                .with_num_res_blocks(1)
                .with_num_classes(Some(3))
                .with_num_heads(2)
        };
        for (res, c) in [(28, 1), (32, 3)] {
            let model = small(res, c).init(&device).unwrap();
            let x = Tensor::<4>::ones([2, c, res, res], &device);
            let y = model.forward(x, &[10.0, 500.0], Some(&[0, 3]));
            assert_eq!(y.dims(), [2, c, res, res]);
        }
        let mnist = UNetConfig::mnist().init(&device).unwrap();
        let y = mnist.forward(Tensor::<4>::ones([1, 1, 28, 28], &device), &[3.0], None);
        assert_eq!(y.dims(), [1, 1, 28, 28]);
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

    #[test]
    fn class_label_changes_the_output_once_weights_are_nonzero() {
        // Zero-initialised layers hide the label at init; randomise every parameter.
        let device = Device::flex();
        let model = UNetConfig::mnist()
            .init(&device)
            .unwrap()
            .randomize(0, 0.05);
        let x = Tensor::<4>::ones([2, 1, 28, 28], &device);
        let y = model.forward(x, &[100.0, 100.0], Some(&[1, 10]));
        let rows = y.chunk(2, 0);
        let d = (rows[0].clone() - rows[1].clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(d > 1e-4, "class and null rows differ: {d}");
    }

    #[test]
    fn rows_of_a_batch_are_independent() {
        // Guidance runs conditional and null rows as one 2B batch: each row's output must
        // depend only on its own input, time and label.
        let device = Device::flex();
        let model = UNetConfig::mnist()
            .init(&device)
            .unwrap()
            .randomize(3, 0.05);
        let mut rng = crate::NoiseRng::new(5);
        let x = rng.normal_tensor([4, 1, 28, 28], &device);
        let t = [10.0, 500.0, 999.0, 250.0];
        let labels = [3, 10, 7, 10];
        let batched = model.forward(x.clone(), &t, Some(&labels));
        for i in 0..4 {
            let xi = x.clone().slice([i..i + 1]);
            let yi = model.forward(xi, &t[i..i + 1], Some(&labels[i..i + 1]));
            let d = (batched.clone().slice([i..i + 1]) - yi)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(d < 1e-4, "row {i} differs by {d} when batched");
        }
    }
}
