//! RePaint against diffusers' `RePaintScheduler` (`tests/data/repaint_reference.json`, made by
//! `scripts/make-repaint-reference.py` with diffusers 0.42.1): the jump schedule exactly, one
//! step and one re-noising within 1e-5 given the same noise; and a whole inpainting run keeps
//! the known pixels exactly and batches like any sampler.

mod common;
use common::tiny;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::{
    repaint_timesteps, step_together, to_host, AnyScheduler, RePaintSchedulerConfig, SamplingState,
    Scheduler,
};
use diffusion::schedule::NoiseScheduleConfig;
use diffusion::{PredictionType, SampleRequest, Sampling};
use serde_json::Value;

fn reference() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/repaint_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(v: &Value, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(floats(v), shape), device)
}

fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

#[test]
fn timesteps_step_and_undo_match_diffusers() {
    let r = reference();
    let device = Device::flex();
    let shape: [usize; 4] = r["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    for case in r["timesteps"].as_array().unwrap() {
        let want: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let got = repaint_timesteps(
            1000,
            usize_of(&case["n"]),
            usize_of(&case["jump_length"]),
            usize_of(&case["jump_n_sample"]),
        );
        assert_eq!(got, want, "{case:?}");
    }
    let schedule = NoiseScheduleConfig::default().build().unwrap();
    for case in r["steps"].as_array().unwrap() {
        let s = RePaintSchedulerConfig {
            num_inference_steps: usize_of(&case["n"]),
            eta: case["eta"].as_f64().unwrap(),
            ..Default::default()
        }
        .init(&schedule, PredictionType::Epsilon)
        .unwrap();
        let t = |k: &str| tensor(&case[k], shape, &device);
        let out = s.repaint_step(
            t("model_output"),
            usize_of(&case["t"]),
            t("sample"),
            t("original_image"),
            t("mask").greater_elem(0.5),
            t("noise"),
        );
        let prev = to_host(out.prev_sample);
        let x0 = to_host(out.pred_original_sample);
        let (e1, e2) = (
            relative(&prev, &floats(&case["prev_sample"])),
            relative(&x0, &floats(&case["pred_original_sample"])),
        );
        assert!(
            e1 <= 1e-5 && e2 <= 1e-5,
            "t = {}: {e1:e}, {e2:e}",
            case["t"]
        );
    }
    for case in r["undo"].as_array().unwrap() {
        let s = RePaintSchedulerConfig {
            num_inference_steps: usize_of(&case["n"]),
            ..Default::default()
        }
        .init(&schedule, PredictionType::Epsilon)
        .unwrap();
        let noise: Vec<Tensor<4>> = case["noise"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| tensor(z, shape, &device))
            .collect();
        let got = to_host(s.undo_step(
            tensor(&case["sample"], shape, &device),
            usize_of(&case["t"]),
            &noise,
        ));
        let e = relative(&got, &floats(&case["result"]));
        assert!(e <= 1e-5, "undo from t = {}: {e:e}", case["t"]);
    }
}

#[test]
fn a_run_keeps_the_known_pixels_exactly_and_batches_like_any_sampler() {
    let device = Device::flex();
    let (model, config) = tiny();
    let scheduler = AnyScheduler::RePaint(
        RePaintSchedulerConfig {
            num_inference_steps: 10,
            jump_length: 3,
            jump_n_sample: 2,
            ..Default::default()
        }
        .init(&config.schedule.build().unwrap(), config.prediction_type)
        .unwrap(),
    );
    let AnyScheduler::RePaint(repaint) = &scheduler else {
        unreachable!()
    };
    assert_eq!(scheduler.timesteps().len() + repaint.jumps(), 28);
    let image: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 37) % 255) as f32 / 127.5 - 1.0)
        .collect();
    // Keep the top half, regenerate the bottom half.
    let keep: Vec<f32> = (0..2 * 64)
        .map(|i| if (i % 64) < 32 { 1.0 } else { 0.0 })
        .collect();
    let to4 = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [2, 1, 8, 8]), &device);
    let request = SampleRequest::new([1, 8, 8], Some(1), 2).with_guidance_scale(2.0);
    let run = || {
        Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .with_inpainting(to4(image.clone()), to4(keep.clone()))
            .unwrap()
    };
    let out = to_host(run().run(|_| {}));
    for i in 0..out.len() {
        if keep[i] == 1.0 {
            assert_eq!(out[i], image[i], "known pixel {i} changed");
        }
    }
    let changed = (0..out.len())
        .filter(|&i| keep[i] == 0.0 && (out[i] - image[i]).abs() > 0.05)
        .count();
    assert!(
        changed > 32,
        "the unknown half was regenerated ({changed} of 64 pixels differ)"
    );
    // Step-batched with a plain run: the same bytes as alone.
    let plain_scheduler = config.scheduler(&Default::default()).unwrap();
    let mut a = SamplingState::new(Some(3), &request, &device)
        .unwrap()
        .with_inpainting(to4(image.clone()), to4(keep.clone()))
        .unwrap();
    let mut b =
        SamplingState::new(Some(3), &SampleRequest::new([1, 8, 8], Some(2), 1), &device).unwrap();
    let mut rounds = 0;
    loop {
        let mut runs: Vec<(&mut SamplingState, &AnyScheduler)> = Vec::new();
        if a.query(&scheduler).is_some() {
            runs.push((&mut a, &scheduler));
        }
        if b.query(&plain_scheduler).is_some() {
            runs.push((&mut b, &plain_scheduler));
        }
        if runs.is_empty() {
            break;
        }
        step_together(&model, &mut runs).unwrap();
        rounds += 1;
    }
    assert!(rounds >= scheduler.timesteps().len());
    assert_eq!(to_host(a.sample().clone()), out, "batched = alone");
}
