//! Step-level batching: runs stepped together, sharing one model call per step, give exactly
//! the images they give alone — whatever their samplers, step counts, guidance scales,
//! classes, image counts and seeds, and when runs join and finish at different steps.

use std::path::Path;

use burn::tensor::Device;
use diffusion::sampler::{
    rows_left, step_in_parts, step_together, to_host, AnyScheduler, PartialStep, SamplerKind,
    SamplerSettings, SamplingState, Share,
};
use diffusion::weights::load_model;
use diffusion::{SampleRequest, Sampling, Scheduler};

type Made = Vec<(AnyScheduler, SampleRequest, usize)>;

/// The shipped model, the runs (scheduler, request, the iteration it joins at) and each run's
/// image alone.
fn runs() -> (
    diffusion::UNet,
    diffusion::ModelConfig,
    Made,
    Vec<Vec<f32>>,
    Device,
) {
    let device = Device::flex();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights/mnist.safetensors");
    let (model, config) = load_model(&weights, &device).unwrap();
    // (sampler, steps, Karras σ, guidance, class, images, seed, joins at iteration)
    let runs = [
        (SamplerKind::Ddpm, 12, false, 3.0, Some(7), 2, 1, 0),
        (SamplerKind::Ddim, 6, false, 1.0, Some(2), 1, 2, 0),
        (
            SamplerKind::DpmSolverPlusPlus,
            5,
            true,
            0.0,
            Some(4),
            3,
            3,
            2,
        ),
        (
            SamplerKind::SdeDpmSolverPlusPlus,
            7,
            true,
            5.0,
            None,
            1,
            4,
            3,
        ),
        (SamplerKind::Ddim, 4, false, 2.0, Some(9), 2, 5, 9),
    ];
    let made: Vec<(AnyScheduler, SampleRequest, usize)> = runs
        .iter()
        .map(|&(sampler, steps, karras, w, class, n, seed, joins)| {
            let settings = SamplerSettings {
                sampler,
                num_inference_steps: steps,
                use_karras_sigmas: karras,
                // The second DDIM run is stochastic (η = 1).
                eta: if sampler == SamplerKind::Ddim && seed == 5 {
                    1.0
                } else {
                    0.0
                },
            };
            let request = SampleRequest {
                image_shape: config.unet.image_shape(),
                class_labels: vec![class; n],
                guidance_scale: w,
                seed,
            };
            (config.scheduler(&settings).unwrap(), request, joins)
        })
        .collect();
    let alone: Vec<Vec<f32>> = made
        .iter()
        .map(|(s, r, _)| to_host(Sampling::new(&model, s, r, &device).unwrap().run(|_| {})))
        .collect();
    (model, config, made, alone, device)
}

#[test]
fn runs_stepped_together_equal_runs_alone_bit_for_bit() {
    let (model, config, made, alone, device) = runs();
    // Each iteration: the runs that join now start, every active run takes one step in one
    // shared model call, and the runs that took their last step leave.
    let mut active: Vec<(usize, SamplingState)> = Vec::new();
    let mut finished: Vec<Option<Vec<f32>>> = made.iter().map(|_| None).collect();
    let mut calls = 0;
    for iteration in 0.. {
        for (i, (_, request, joins)) in made.iter().enumerate() {
            if *joins == iteration {
                let run = SamplingState::new(config.unet.num_classes, request, &device).unwrap();
                assert_eq!(request.rows(config.unet.num_classes), run.rows());
                active.push((i, run));
            }
        }
        if active.is_empty() {
            if finished.iter().all(Option::is_some) {
                break;
            }
            continue;
        }
        let mut batch: Vec<(&mut SamplingState, &AnyScheduler)> = active
            .iter_mut()
            .map(|(i, run)| (run, &made[*i].0))
            .collect();
        let outputs = step_together(&model, &mut batch).unwrap();
        calls += 1;
        assert!(
            outputs.iter().all(Option::is_some),
            "an active run had no step left"
        );
        active.retain(|(i, run)| {
            let done = run.steps_done() == made[*i].0.timesteps().len();
            if done {
                finished[*i] = Some(to_host(run.sample().clone()));
            }
            !done
        });
    }
    for (i, (got, want)) in finished.iter().zip(&alone).enumerate() {
        assert!(
            got.as_deref() == Some(want.as_slice()),
            "run {i} differs from the run alone"
        );
    }
    // 34 steps in all, in 13 shared model calls (the last run joins at iteration 9).
    assert_eq!(calls, 13);
}

#[test]
fn runs_stepped_in_parts_equal_runs_alone_bit_for_bit() {
    // Every run puts 1–3 of its rows in each call (varying by call and run), so its step's
    // model call is spread over several shared calls, and split at different rows each step.
    let (model, config, made, alone, device) = runs();
    let mut active: Vec<(usize, SamplingState, Option<PartialStep>)> = made
        .iter()
        .enumerate()
        .map(|(i, (_, request, _))| {
            let run = SamplingState::new(config.unet.num_classes, request, &device).unwrap();
            (i, run, None)
        })
        .collect();
    let mut finished: Vec<Option<Vec<f32>>> = made.iter().map(|_| None).collect();
    let (mut calls, mut steps) = (0, 0);
    while !active.is_empty() {
        let mut shares: Vec<Share<'_, AnyScheduler>> = active
            .iter_mut()
            .map(|(i, run, partial)| Share {
                state: run,
                scheduler: &made[*i].0,
                partial,
                max_rows: 1 + (calls + *i) % 3,
            })
            .collect();
        let outputs = step_in_parts(&model, &mut shares).unwrap();
        steps += outputs.iter().flatten().count();
        calls += 1;
        active.retain(|(i, run, partial)| {
            let done = rows_left(run, &made[*i].0, partial) == 0;
            if done {
                finished[*i] = Some(to_host(run.sample().clone()));
            }
            !done
        });
    }
    for (i, (got, want)) in finished.iter().zip(&alone).enumerate() {
        assert!(
            got.as_deref() == Some(want.as_slice()),
            "run {i} stepped in parts differs from the run alone"
        );
    }
    assert_eq!(steps, 34);
    assert!(calls > 34 / 5, "the steps were not split: {calls} calls");
}
