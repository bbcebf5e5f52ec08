//! The U-Net module ([`UNet`], its [`Level`]s) built from a [`UNetConfig`]'s plan, and its
//! forward pass. Every operation with a fast CPU kernel goes through `flex_kernels`
//! (`kernels::conv2d(&conv, x)`, …), which falls back to Burn's op on other backends.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::nn::{
    Embedding, EmbeddingConfig, GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use flex_kernels as kernels;

use super::config::BlockPlan;
use super::{
    timestep_embedding, AttentionBlock, AttentionBlockConfig, Downsample, ResBlock, ResBlockConfig,
    UNetConfig, Upsample,
};
use crate::error::Result;
use crate::noise::NormalTensor;
use crate::sampler::Denoiser;

impl UNetConfig {
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
                .with_num_heads(self.heads(c))
                .with_norm_groups(self.norm_groups)
                .with_norm_eps(self.norm_eps)
                .init(device)
        };
        let down_padding = self.downsample_padding.unwrap_or(1);
        let level = |(blocks, resample): &(Vec<BlockPlan>, bool), up: bool| Level {
            blocks: blocks.iter().map(res_block).collect(),
            attentions: blocks
                .iter()
                .map(|b| b.attention.then(|| attn(b.c_out)))
                .collect(),
            downsample: (!up && *resample)
                .then(|| Downsample::new(blocks.last().unwrap().c_out, down_padding, device)),
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
            mid_attention: self.has_mid_attention().then(|| {
                let groups = self.mid_attention_norm_groups.unwrap_or(self.norm_groups);
                AttentionBlockConfig::new(plan.mid_channels)
                    .with_num_heads(self.heads(plan.mid_channels))
                    .with_norm_groups(groups.max(1))
                    .with_normalize(groups != 0)
                    .with_norm_eps(self.norm_eps)
                    .init(device)
            }),
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
    /// Middle self-attention (absent when the config says so).
    pub mid_attention: Option<AttentionBlock>,
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
        randomize(self, seed, std)
    }

    /// Index of the null (unconditional) class, if the model is class-conditional.
    pub fn null_class(&self) -> Option<usize> {
        self.config.num_classes
    }

    /// The dtype the forward pass computes in: its parameters' (f32, or bf16 after
    /// [`UNet::autocast`]).
    pub fn compute_dtype(&self) -> FloatDType {
        // The first parameter the forward touches, so a lazily initialised model draws its
        // values in the same order as before this was asked.
        self.time_embed_1.weight.val().dtype().into()
    }

    /// The combined time (+ class) embedding, after the SiLU every ResBlock applies to it.
    fn embedding(
        &self,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
        device: &Device,
    ) -> Tensor<2> {
        let b = timesteps.len();
        let c = &self.config;
        let t = timestep_embedding(
            timesteps,
            c.base_channels,
            c.flip_sin_to_cos.unwrap_or(false),
            c.freq_shift.unwrap_or(1.0),
            device,
        )
        .cast(self.compute_dtype());
        let mut emb = self
            .time_embed_2
            .forward(kernels::silu(self.time_embed_1.forward(t)));
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
        kernels::silu(emb)
    }

    /// Predicts the model output (ε or v) for noisy images at the given timesteps.
    ///
    /// `timesteps` and `class_labels` live on the host: the sinusoidal embedding is computed
    /// there in `f64` so every backend sees identical inputs. A label equal to `num_classes` is
    /// the null class; `None` means null for every sample.
    ///
    /// The pass computes in the parameters' dtype ([`UNet::compute_dtype`]): `x` is cast to it
    /// and the output back to `x`'s dtype (no-ops when they agree).
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
        let out_dtype: FloatDType = x.dtype().into();
        let x = x.cast(self.compute_dtype());
        let emb = self.embedding(timesteps, class_labels, &x.device());
        let mut h = kernels::conv2d(&self.conv_in, x);
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
        if let Some(attn) = &self.mid_attention {
            h = attn.forward(h);
        }
        h = self.mid_block_2.forward(h, emb.clone());
        for level in &self.up {
            for (block, attn) in level.blocks.iter().zip(&level.attentions) {
                let skip = skips.pop().expect("one skip per up block");
                h = block.forward(kernels::cat_channels(h, skip), emb.clone());
                if let Some(attn) = attn {
                    h = attn.forward(h);
                }
            }
            if let Some(up) = &level.upsample {
                h = up.forward(h);
            }
        }
        kernels::conv2d(&self.conv_out, kernels::group_norm_silu(&self.norm_out, h)).cast(out_dtype)
    }
}

/// [`UNet::randomize`] for any module (the blocks' tests use it too).
pub(crate) fn randomize<M: Module>(module: M, seed: u64, std: f64) -> M {
    struct Randomise(crate::NoiseRng, f64);
    impl burn::module::ModuleMapper for Randomise {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let Self(rng, std) = self;
            // The new value keeps the parameter's require-grad flag (autodiff devices).
            param.map(|t| {
                let noise = rng.normal_tensor(t.dims(), &t.device()).mul_scalar(*std);
                noise.set_require_grad(t.is_require_grad())
            })
        }
    }
    module.map(&mut Randomise(crate::NoiseRng::new(seed), std))
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
    use crate::TimeMode;
    use flex_kernels::{calls, with_burn_ops, Kernel, Pass};

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

    /// Every parameter's gradient, flattened in visiting order.
    fn parameter_gradients(model: &UNet, grads: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
        struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                let g = param
                    .val()
                    .grad(self.0)
                    .expect("every parameter has a gradient");
                self.1
                    .push(g.into_data().convert::<f32>().try_into_vec().unwrap());
            }
        }
        let mut c = Collect(grads, Vec::new());
        model.visit(&mut c);
        c.1
    }

    /// Max |a − b| / max |b| over two flat vectors.
    fn relative(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    #[test]
    fn whole_unet_on_the_fast_kernels_equals_burns_ops_values_and_gradients() {
        // Both time modes, attention on the fused kernel's maps (7×7: the second level and the
        // middle), a channel change (1×1 skips), down/upsampling and the skip concatenations;
        // dropout 0 so both runs see the same function.
        let device = Device::flex().autodiff();
        for time_mode in [TimeMode::Film, TimeMode::Add] {
            let model = UNetConfig::new(1, 14, 32, vec![1, 2], vec![7])
                .with_num_res_blocks(1)
                .with_num_classes(Some(3))
                .with_num_heads(2)
                .with_dropout(0.0)
                .with_time_mode(time_mode)
                .init(&device)
                .unwrap()
                .randomize(11, 0.1);
            let mut rng = crate::NoiseRng::new(4);
            let x = rng.normal_tensor([3, 1, 14, 14], &device);
            let r = rng.normal_tensor([3, 1, 14, 14], &device);
            let run = || {
                let x = x.clone().require_grad();
                let y = model.forward(x.clone(), &[3.0, 400.0, 999.0], Some(&[0, 2, 3]));
                let grads = (y.clone() * r.clone()).sum().backward();
                let dx = x
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec()
                    .unwrap();
                let y = y
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap();
                (y, dx, parameter_gradients(&model, &grads))
            };
            let kernels = [
                Kernel::Conv2d,
                Kernel::GroupNorm,
                Kernel::Silu,
                Kernel::Elementwise,
                Kernel::SelfAttention,
            ];
            let count = || kernels.map(|k| (calls(k, Pass::Forward), calls(k, Pass::Backward)));
            let before = count();
            let fast = run();
            let after = count();
            for ((k, b), a) in kernels.iter().zip(before).zip(after) {
                assert!(
                    a.0 > b.0 && a.1 > b.1,
                    "{time_mode:?}: {k:?} did not run forward and backward"
                );
            }
            let burn = with_burn_ops(run);
            assert_eq!(
                count(),
                after,
                "{time_mode:?}: a kernel ran inside with_burn_ops"
            );
            let case = format!("{time_mode:?}");
            assert!(relative(&fast.0, &burn.0) < 1e-4, "{case}: output");
            assert!(relative(&fast.1, &burn.1) < 1e-4, "{case}: ∂L/∂x");
            assert_eq!(fast.2.len(), burn.2.len());
            // Relative to the largest gradient of any parameter: a bias just before a GroupNorm
            // of one channel per group has a true gradient of 0, so both runs give rounding
            // noise there (~1e-8) and a per-parameter relative error would compare noise.
            let largest = |g: &[f32]| g.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = burn.2.iter().map(|g| largest(g)).fold(0f32, f32::max);
            for (i, (f, b)) in fast.2.iter().zip(&burn.2).enumerate() {
                let diff = f.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                let tolerance = 1e-3 * largest(b) + 1e-5 * scale;
                assert!(
                    diff <= tolerance,
                    "{case}: parameter {i} gradient differs by {diff} (its largest {}, of all {scale})",
                    largest(b)
                );
            }
        }
    }
}
