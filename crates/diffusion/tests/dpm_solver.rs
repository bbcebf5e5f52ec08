//! DPM-Solver++ against diffusers' `DPMSolverMultistepScheduler` itself: the trajectories in
//! `tests/data/dpm_solver_reference.json` (made by `scripts/make-dpm-solver-reference.py` with
//! diffusers 0.42.1) drive both with the analytic model `model_output = a·x + b·t` from the
//! same x_T; every timestep, noise level and intermediate x_t must agree.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::DpmSolverMultistepConfig;
use diffusion::{NoiseScheduleConfig, PredictionType, Scheduler, SchedulerState};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    diffusers: String,
    a: f64,
    b: f64,
    shape: [usize; 4],
    #[serde(rename = "x_T")]
    x_t: Vec<f32>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prediction_type: String,
    config: DpmSolverMultistepConfig,
    timesteps: Vec<usize>,
    sigmas: Vec<f64>,
    samples: Vec<Vec<f32>>,
    noises: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("data/dpm_solver_reference.json")).unwrap()
}

fn tensor(values: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// |got − want| relative to max(1, |want|): both sides step in `f32`, and trajectories reach
/// |x| ≈ 7, so this is a few float32 ulps per step, accumulated.
const TOLERANCE: f64 = 1e-5;

#[test]
fn every_intermediate_sample_matches_diffusers() {
    let r = reference();
    assert_eq!(r.diffusers, "0.42.1");
    let device = Device::flex();
    let schedule = NoiseScheduleConfig::default().build().unwrap();
    assert!(r.cases.len() >= 16);
    let mut worst = 0.0f64;
    for case in &r.cases {
        let prediction_type = PredictionType::from_name(&case.prediction_type).unwrap();
        let solver = case.config.init(&schedule, prediction_type).unwrap();
        assert_eq!(
            solver.timesteps(),
            case.timesteps,
            "{}: timesteps",
            case.name
        );
        assert_eq!(solver.sigmas().len(), case.sigmas.len(), "{}", case.name);
        for (i, (&got, &want)) in solver.sigmas().iter().zip(&case.sigmas).enumerate() {
            // diffusers stores its sigmas as float32.
            assert!(
                (got - want).abs() <= 1e-7 * want.max(1.0),
                "{}: sigma {i}: {got} vs {want}",
                case.name
            );
        }
        let mut x = tensor(&r.x_t, r.shape, &device);
        let mut state = SchedulerState::default();
        assert_eq!(case.samples.len(), case.timesteps.len());
        for (i, &t) in case.timesteps.iter().enumerate() {
            let model_output = x.clone().mul_scalar(r.a).add_scalar(r.b * t as f64);
            let noise = solver
                .needs_noise(i)
                .then(|| tensor(&case.noises[i], r.shape, &device));
            x = solver
                .step(&mut state, model_output, i, x, noise)
                .prev_sample;
            let got = to_vec(x.clone());
            for (j, (&g, &w)) in got.iter().zip(&case.samples[i]).enumerate() {
                let err = (g as f64 - w as f64).abs() / (w as f64).abs().max(1.0);
                worst = worst.max(err);
                assert!(
                    err <= TOLERANCE,
                    "{}: step {i} (t = {t}), element {j}: {g} vs diffusers {w}",
                    case.name
                );
            }
        }
    }
    eprintln!("worst relative difference from diffusers: {worst:.2e}");
}

#[test]
fn the_reference_is_not_vacuous() {
    // Different settings give different trajectories, so matching all of them means something:
    // order 1 ≠ order 2, clipping ≠ dynamic thresholding, second-order ≠ Euler last step, ODE ≠ SDE.
    let r = reference();
    let last = |name: &str| {
        r.cases
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .samples
            .last()
            .unwrap()
            .clone()
    };
    let differ = |a: &str, b: &str| {
        let (x, y) = (last(a), last(b));
        let d = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(d > 1e-2, "{a} vs {b}: {d}");
    };
    differ("order1-linspace-eps-10", "order2-linspace-eps-10");
    differ("order2-clip-eps-10", "order2-threshold-eps-10");
    differ("order2-sigmamin-eps-16", "order2-sigmamin-euler-eps-16");
    differ("order2-linspace-eps-10", "sde-order2-eps-10");
}
