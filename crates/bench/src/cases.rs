//! The benchmark cases, each a closure that does one unit of work and waits for its result.
//!
//! - `train`: one optimisation step exactly as the trainer takes it, minus the bookkeeping:
//!   q_sample at per-sample t, forward with labels (10 % null), ε-MSE, backward, AdamW —
//!   the same work as `ref_unet.py`'s `train_step`. (`train_full` adds the trainer's global
//!   grad-norm clip and EMA update.)
//! - `forward`: one no-grad forward pass at per-sample t with labels.
//! - `ddim`: 50-step DDIM with classifier-free guidance (w = 3, cond + uncond as one 2B batch),
//!   through the same `Sampling` loop as the CLI, the server and the browser; `dpm` the same
//!   with 15 DPM-Solver++ steps (its quality matches DDIM-50's; see docs/samplers.md).

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::SamplerSettings;
use diffusion::{
    mse_loss, q_sample, ModelConfig, NoiseRng, NoiseScheduleConfig, NormalTensor, Precision,
    PredictionType, UNetConfig,
};
use training::ema::Ema;
use training::grad::clip_global_norm;

/// Random images in [-1, 1], timesteps and labels for a batch (fixed seed).
fn inputs(c: &UNetConfig, batch: usize, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<usize>) {
    let mut rng = NoiseRng::new(seed);
    let n = batch * c.in_channels * c.resolution * c.resolution;
    let x = (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
    let t = (0..batch).map(|_| rng.below(1000) as usize).collect();
    let y = (0..batch).map(|_| rng.below(10) as usize).collect();
    (x, t, y)
}

fn shape(c: &UNetConfig, batch: usize) -> [usize; 4] {
    [batch, c.in_channels, c.resolution, c.resolution]
}

/// A training step closure for `config` at `batch` in `precision`; `full` adds clipping and
/// EMA.
pub fn train_step(
    config: &UNetConfig,
    batch: usize,
    full: bool,
    precision: Precision,
    device: &Device,
) -> impl FnMut() {
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Some(config.init(&ad).expect("valid config"));
    let mut ema = model.as_ref().map(|m| m.valid());
    let mut optim = AdamWConfig::new().init();
    let schedule = NoiseScheduleConfig::default().build().expect("schedule");
    let (x0, t, y) = inputs(config, batch, 1);
    let null = config.num_classes.unwrap_or(0);
    let conditional = config.num_classes.is_some();
    let mut rng = NoiseRng::new(2);
    let shape = shape(config, batch);
    let mut step = 0u64;
    move || {
        let m = model.take().expect("model");
        let x0 = Tensor::<4>::from_data(TensorData::new(x0.clone(), shape), &ad);
        let noise = rng.normal_tensor(shape, &ad);
        let labels: Vec<usize> = y
            .iter()
            .map(|&l| if rng.uniform() < 0.1 { null } else { l })
            .collect();
        let xt = q_sample(&schedule, x0.clone(), &t, noise.clone());
        let tf: Vec<f64> = t.iter().map(|&v| v as f64).collect();
        let out = m
            .autocast(precision)
            .forward(xt, &tf, conditional.then_some(labels.as_slice()));
        let target = PredictionType::Epsilon.target(&schedule, x0, noise, &t);
        let loss = mse_loss(out, target);
        // The trainer reads the loss every step (for the non-finite check and the metrics).
        let _ = loss.clone().into_scalar::<f64>();
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        if full {
            clip_global_norm(&m, &mut grads, 1.0);
        }
        let m = optim.step(2e-4, m, grads);
        if full {
            let e = ema.take().expect("ema");
            ema = Some(
                Ema {
                    decay: 0.999,
                    warmup: true,
                }
                .update(e, &m, step),
            );
        }
        // Wait for the update (asynchronous backends): read one parameter value back.
        let _ = first_value(&m);
        step += 1;
        model = Some(m);
    }
}

/// The first value of the first parameter (a read that waits for the update).
fn first_value(m: &diffusion::UNet) -> f32 {
    let mut sum = 0.0f32;
    struct First<'a>(&'a mut f32, bool);
    impl burn::module::ModuleVisitor for First<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if !self.1 {
                *self.0 = p
                    .val()
                    .flatten::<1>(0, D - 1)
                    .slice([0..1])
                    .into_scalar::<f32>();
                self.1 = true;
            }
        }
    }
    m.visit(&mut First(&mut sum, false));
    sum
}

/// A forward-pass closure (no autodiff).
pub fn forward(config: &UNetConfig, batch: usize, device: &Device) -> impl FnMut() {
    device.seed(0);
    let model = config
        .init(device)
        .expect("valid config")
        .randomize(0, 0.02);
    let (x, t, y) = inputs(config, batch, 1);
    let shape = shape(config, batch);
    let x = Tensor::<4>::from_data(TensorData::new(x, shape), device);
    let tf: Vec<f64> = t.iter().map(|&v| v as f64).collect();
    let labels = config.num_classes.map(|_| y);
    move || {
        let out = model.forward(x.clone(), &tf, labels.as_deref());
        let _ = out.sum().into_scalar::<f32>();
    }
}

/// A guided (w = 3) sampling closure with `settings`, labels `i mod 10`.
pub fn guided_sampling(
    config: &UNetConfig,
    batch: usize,
    settings: SamplerSettings,
    device: &Device,
) -> impl FnMut() {
    device.seed(0);
    let model = config
        .init(device)
        .expect("valid config")
        .randomize(0, 0.02);
    let mc = ModelConfig::new(config.clone());
    let labels: Vec<Option<usize>> = (0..batch)
        .map(|i| config.num_classes.map(|k| i % k))
        .collect();
    let device = device.clone();
    move || {
        training::generate::generate(
            &model,
            &mc,
            &settings,
            labels.clone(),
            3.0,
            0,
            &device,
            |_| {},
        )
        .expect("sampling");
    }
}
