//! SDEdit's math: where a run starts, how the image is noised, and its two limits — strength 1
//! is plain sampling from the same seed, exactly; the smallest strength gives the image back.

mod common;
use common::tiny;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::{
    sdedit_start_index, to_host, SamplerKind, SamplerSettings, SamplingState, Scheduler,
};
use diffusion::weights::load_model;
use diffusion::{SampleRequest, Sampling};

fn settings(sampler: SamplerKind, steps: usize, karras: bool) -> SamplerSettings {
    SamplerSettings {
        sampler,
        num_inference_steps: steps,
        use_karras_sigmas: karras,
        ..Default::default()
    }
}

fn every_sampler() -> Vec<SamplerSettings> {
    vec![
        settings(SamplerKind::Ddim, 10, false),
        settings(SamplerKind::Ddpm, 10, false),
        settings(SamplerKind::DpmSolverPlusPlus, 8, true),
        settings(SamplerKind::SdeDpmSolverPlusPlus, 8, true),
    ]
}

fn image(n: usize, c: usize, side: usize, device: &Device) -> Tensor<4> {
    // A smooth pattern in [-1, 1].
    let values: Vec<f32> = (0..n * c * side * side)
        .map(|i| ((i % (side * side)) as f32 / (side * side) as f32) * 2.0 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(values, [n, c, side, side]), device)
}

#[test]
fn strength_one_is_plain_sampling_from_the_same_seed() {
    let device = Device::flex();
    let (model, config) = tiny();
    let request = SampleRequest::new([1, 8, 8], Some(1), 2).with_guidance_scale(2.0);
    for s in every_sampler() {
        let scheduler = config.scheduler(&s).unwrap();
        let plain = Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .run(|_| {});
        let edited = Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .with_init_image(image(2, 1, 8, &device), 1.0)
            .unwrap()
            .run(|_| {});
        assert_eq!(to_host(plain), to_host(edited), "{:?}", s.sampler);
    }
}

#[test]
fn the_run_starts_at_the_strengths_step_from_the_noised_image() {
    let device = Device::flex();
    let (_, config) = tiny();
    let request = SampleRequest::new([1, 8, 8], None, 2);
    let x0 = image(2, 1, 8, &device);
    for s in every_sampler() {
        let scheduler = config.scheduler(&s).unwrap();
        let n = scheduler.timesteps().len();
        let fresh = || SamplingState::new(Some(3), &request, &device).unwrap();
        let eps = fresh().sample().clone();
        let state = fresh()
            .with_init_image(&scheduler, x0.clone(), 0.5)
            .unwrap();
        let start = sdedit_start_index(n, 0.5).unwrap();
        assert_eq!(state.steps_done(), start, "{:?}", s.sampler);
        let (a, b) = scheduler.noise_level(start);
        let expected = to_host(x0.clone().mul_scalar(a) + eps.mul_scalar(b));
        let got = to_host(state.sample().clone());
        let d = got
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-6, "{:?}: x_t differs by {d}", s.sampler);
        // Karras sigmas put the noise level between integer timesteps: the solver's own.
        assert!(a > 0.0 && b > 0.0 && (a * a + b * b - 1.0).abs() < 1e-9);
    }
    // The image must fit the request; the strength must leave a step.
    let scheduler = config.scheduler(&every_sampler()[0]).unwrap();
    let state = SamplingState::new(Some(3), &request, &device).unwrap();
    let e = state
        .clone()
        .with_init_image(&scheduler, image(1, 1, 8, &device), 0.5)
        .err()
        .unwrap();
    assert!(e.to_string().contains("init image has shape"), "{e}");
    let e = state.with_init_image(&scheduler, x0, 0.01).err().unwrap();
    assert!(e.to_string().contains("no step to take"), "{e}");
}

#[test]
fn the_smallest_strength_gives_the_image_back() {
    // The shipped MNIST model, one DDIM step of 50 at t = 0 from a real-looking digit (its own
    // sample). That step starts from the image plus noise of σ = √(1 − ᾱ_0) = 0.01 (1.3/255 per
    // unit of ε) and removes what of it the model can see, which at this level is little: the
    // result is the image within the noise added, at most 0.01 · max|ε| (≈ 3.3 over 784
    // draws: 4.2/255) on a pixel and about 1/255 on average.
    let device = Device::flex();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (model, config) = load_model(&root.join("weights/mnist.safetensors"), &device).unwrap();
    let s = settings(SamplerKind::Ddim, 50, false);
    let scheduler = config.scheduler(&s).unwrap();
    let digit = Sampling::new(
        &model,
        &scheduler,
        &SampleRequest::new([1, 28, 28], Some(3), 1),
        &device,
    )
    .unwrap()
    .run(|_| {});
    let request = SampleRequest::new([1, 28, 28], None, 1).with_seed(8);
    let back = Sampling::new(&model, &scheduler, &request, &device)
        .unwrap()
        .with_init_image(digit.clone(), 1.0 / 50.0)
        .unwrap()
        .run(|_| {});
    let px = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as i32;
    let (a, b) = (to_host(digit), to_host(back));
    let diffs: Vec<i32> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (px(*x) - px(*y)).abs())
        .collect();
    let max = *diffs.iter().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    assert!(
        max <= 5 && mean <= 1.0,
        "strength 1/50 changed a pixel by up to {max}/255, {mean:.2}/255 on average"
    );
}
