//! Sampler tests driven by analytic denoisers, so that any sign or coefficient error shows.

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::{
    DdimSchedulerConfig, DdpmSchedulerConfig, DpmSolverAlgorithm, DpmSolverMultistepConfig,
    SamplerKind, SamplerSettings, VarianceType,
};
use diffusion::{
    Denoiser, NoiseSchedule, NoiseScheduleConfig, PredictionType, SampleRequest, Sampling,
    Scheduler, TimestepSpacing,
};

const SHAPE: [usize; 3] = [1, 4, 4];

fn point(values: &[f32], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), [1, 1, 4, 4]), device)
}

fn to_vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The exact denoiser for data that is a single point x0* per class (and one for the null
/// class): given x_t = √ᾱ x0* + √(1−ᾱ) ε it returns the true ε (or v).
struct Oracle {
    schedule: NoiseSchedule,
    prediction_type: PredictionType,
    /// x0* per label; the last entry is the null / unconditional point.
    points: Vec<Tensor<4>>,
    conditional: bool,
}

impl Denoiser for Oracle {
    fn num_classes(&self) -> Option<usize> {
        self.conditional.then(|| self.points.len() - 1)
    }

    fn predict(
        &self,
        x: Tensor<4>,
        timesteps: &[f64],
        class_labels: Option<&[usize]>,
    ) -> Tensor<4> {
        let b = x.dims()[0];
        let rows: Vec<Tensor<4>> = (0..b)
            .map(|i| {
                let t = timesteps[i] as usize;
                let ab = self.schedule.alphas_cumprod[t];
                let label = class_labels.map_or(self.points.len() - 1, |l| l[i]);
                let x0 = self.points[label].clone();
                let xi = x.clone().slice([i..i + 1]);
                let eps =
                    (xi - x0.clone().mul_scalar(ab.sqrt())).mul_scalar(1.0 / (1.0 - ab).sqrt());
                match self.prediction_type {
                    PredictionType::Epsilon => eps,
                    PredictionType::VPrediction => {
                        eps.mul_scalar(ab.sqrt()) - x0.mul_scalar((1.0 - ab).sqrt())
                    }
                }
            })
            .collect();
        Tensor::cat(rows, 0)
    }
}

fn schedule() -> NoiseSchedule {
    NoiseScheduleConfig::default().build().unwrap()
}

fn x0_star() -> Vec<f32> {
    (0..16).map(|i| (i as f32 / 15.0) * 1.6 - 0.8).collect()
}

fn run<S: Scheduler>(model: &impl Denoiser, scheduler: &S, request: &SampleRequest) -> Vec<f32> {
    let device = Device::flex();
    to_vec(
        Sampling::new(model, scheduler, request, &device)
            .unwrap()
            .run(|_| {}),
    )
}

#[test]
fn oracle_driven_samplers_recover_the_data_point() {
    let device = Device::flex();
    let target = x0_star();
    for prediction_type in [PredictionType::Epsilon, PredictionType::VPrediction] {
        let oracle = Oracle {
            schedule: schedule(),
            prediction_type,
            points: vec![point(&target, &device)],
            conditional: false,
        };
        let request = SampleRequest::new(SHAPE, None, 2).with_seed(5);
        let s = schedule();
        for steps in [1, 7, 50, 1000] {
            for eta in [0.0, 0.5, 1.0] {
                let cfg = DdimSchedulerConfig {
                    num_inference_steps: steps,
                    eta,
                    clip_sample: false,
                    ..Default::default()
                };
                let out = run(&oracle, &cfg.init(&s, prediction_type).unwrap(), &request);
                for img in out.chunks(16) {
                    let d = max_diff(img, &target);
                    assert!(
                        d < 2e-3,
                        "DDIM {prediction_type:?} steps={steps} eta={eta}: {d}"
                    );
                }
            }
            for variance_type in [VarianceType::FixedSmall, VarianceType::FixedLarge] {
                for spacing in [TimestepSpacing::Leading, TimestepSpacing::Trailing] {
                    let cfg = DdpmSchedulerConfig {
                        num_inference_steps: steps,
                        variance_type,
                        timestep_spacing: spacing,
                        clip_sample: false,
                        ..Default::default()
                    };
                    let out = run(&oracle, &cfg.init(&s, prediction_type).unwrap(), &request);
                    for img in out.chunks(16) {
                        let d = max_diff(img, &target);
                        assert!(
                            d < 2e-3,
                            "DDPM {prediction_type:?} {variance_type:?} {spacing:?} steps={steps}: {d}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ddim_eta_zero_is_deterministic_and_seed_dependent() {
    let device = Device::flex();
    let oracle = Oracle {
        schedule: schedule(),
        prediction_type: PredictionType::Epsilon,
        points: vec![point(&x0_star(), &device)],
        conditional: false,
    };
    // A denoiser that is wrong on purpose, so the result depends on x_T.
    struct Damped<'a>(&'a Oracle);
    impl Denoiser for Damped<'_> {
        fn num_classes(&self) -> Option<usize> {
            None
        }
        fn predict(&self, x: Tensor<4>, t: &[f64], l: Option<&[usize]>) -> Tensor<4> {
            self.0.predict(x, t, l).mul_scalar(0.7)
        }
    }
    let model = Damped(&oracle);
    let s = schedule();
    let ddim = DdimSchedulerConfig::default()
        .init(&s, PredictionType::Epsilon)
        .unwrap();
    let req = SampleRequest::new(SHAPE, None, 3).with_seed(1);
    let a = run(&model, &ddim, &req);
    let b = run(&model, &ddim, &req);
    assert_eq!(a, b, "same seed, same output");
    let c = run(&model, &ddim, &req.clone().with_seed(2));
    assert!(max_diff(&a, &c) > 1e-3, "different seed, different output");
    assert!(!ddim.needs_noise(10), "η = 0 draws no noise after x_T");
}

/// A smooth, non-trivial denoiser for comparing two samplers on identical inputs.
struct Linear;
impl Denoiser for Linear {
    fn num_classes(&self) -> Option<usize> {
        None
    }
    fn predict(&self, x: Tensor<4>, t: &[f64], _: Option<&[usize]>) -> Tensor<4> {
        x.mul_scalar(0.8 * (1.0 - t[0] / 2000.0))
    }
}

#[test]
fn ddim_eta_one_over_all_steps_equals_ddpm_posterior_variance() {
    let s = schedule();
    let ddim = DdimSchedulerConfig {
        num_inference_steps: 1000,
        eta: 1.0,
        clip_sample: false,
        ..Default::default()
    }
    .init(&s, PredictionType::Epsilon)
    .unwrap();
    let ddpm = DdpmSchedulerConfig {
        num_inference_steps: 1000,
        variance_type: VarianceType::FixedSmall,
        clip_sample: false,
        ..Default::default()
    }
    .init(&s, PredictionType::Epsilon)
    .unwrap();
    let req = SampleRequest::new(SHAPE, None, 4).with_seed(77);
    let a = run(&Linear, &ddim, &req);
    let b = run(&Linear, &ddpm, &req);
    let d = max_diff(&a, &b);
    assert!(d < 1e-3, "DDIM(η=1, all steps) vs DDPM(β̃): {d}");
    // And the comparison is not vacuous: η = 0 differs.
    let det = DdimSchedulerConfig {
        num_inference_steps: 1000,
        clip_sample: false,
        ..Default::default()
    }
    .init(&s, PredictionType::Epsilon)
    .unwrap();
    assert!(max_diff(&run(&Linear, &det, &req), &b) > 0.05);
}

#[test]
fn guidance_one_is_conditional_and_zero_is_unconditional_in_the_loop() {
    let device = Device::flex();
    let cond_point: Vec<f32> = x0_star();
    let null_point: Vec<f32> = x0_star().iter().map(|v| -v * 0.5).collect();
    let oracle = Oracle {
        schedule: schedule(),
        prediction_type: PredictionType::Epsilon,
        points: vec![point(&cond_point, &device), point(&null_point, &device)],
        conditional: true,
    };
    let s = schedule();
    let ddim = DdimSchedulerConfig {
        clip_sample: false,
        ..Default::default()
    }
    .init(&s, PredictionType::Epsilon)
    .unwrap();
    let req = SampleRequest::new(SHAPE, Some(0), 2).with_seed(3);
    let w1 = run(&oracle, &ddim, &req.clone().with_guidance_scale(1.0));
    assert!(max_diff(&w1[..16], &cond_point) < 2e-3);
    let w0 = run(&oracle, &ddim, &req.clone().with_guidance_scale(0.0));
    assert!(max_diff(&w0[..16], &null_point) < 2e-3);
    // w = 2 runs the batched 2B path; the oracle's guided ε extrapolates linearly, and for
    // these point masses the result is x0 = u + 2 (c − u).
    let w2 = run(&oracle, &ddim, &req.clone().with_guidance_scale(2.0));
    let expect: Vec<f32> = cond_point
        .iter()
        .zip(&null_point)
        .map(|(c, u)| u + 2.0 * (c - u))
        .collect();
    assert!(
        max_diff(&w2[..16], &expect) < 5e-3,
        "{}",
        max_diff(&w2[..16], &expect)
    );
    // An out-of-range class is a typed error.
    let bad = SampleRequest::new(SHAPE, Some(1), 1);
    assert!(Sampling::new(&oracle, &ddim, &bad, &device).is_err());
}

#[test]
fn progress_reports_every_step_with_x0() {
    let device = Device::flex();
    let oracle = Oracle {
        schedule: schedule(),
        prediction_type: PredictionType::Epsilon,
        points: vec![point(&x0_star(), &device)],
        conditional: false,
    };
    let s = schedule();
    let ddim = DdimSchedulerConfig {
        num_inference_steps: 10,
        clip_sample: false,
        ..Default::default()
    }
    .init(&s, PredictionType::Epsilon)
    .unwrap();
    let mut seen = vec![];
    let req = SampleRequest::new(SHAPE, None, 1);
    Sampling::new(&oracle, &ddim, &req, &device)
        .unwrap()
        .run(|p| {
            assert_eq!(p.num_steps, 10);
            seen.push((p.step_index, p.timestep));
            // The oracle's x̂0 is exact at every step.
            assert!(max_diff(&to_vec(p.pred_original_sample.clone()), &x0_star()) < 2e-3);
        });
    assert_eq!(seen.first(), Some(&(0, 900)));
    assert_eq!(seen.last(), Some(&(9, 0)));
    assert_eq!(seen.len(), 10);
}

#[test]
fn oracle_driven_dpm_solver_recovers_the_data_point() {
    // With the exact ε (or v) every x̂_0 is x0*, and every DPM-Solver++ step keeps x_t on the
    // path √ᾱ x0* + √(1−ᾱ) ε; the last step (σ = 0) returns x0* itself.
    let device = Device::flex();
    let target = x0_star();
    let s = schedule();
    for prediction_type in [PredictionType::Epsilon, PredictionType::VPrediction] {
        let oracle = Oracle {
            schedule: schedule(),
            prediction_type,
            points: vec![point(&target, &device)],
            conditional: false,
        };
        let request = SampleRequest::new(SHAPE, None, 2).with_seed(9);
        for steps in [1, 2, 5, 8, 10, 15, 20, 50, 999] {
            for (solver_order, karras, algorithm_type) in [
                (1, false, DpmSolverAlgorithm::DpmSolverPlusPlus),
                (2, false, DpmSolverAlgorithm::DpmSolverPlusPlus),
                (2, true, DpmSolverAlgorithm::DpmSolverPlusPlus),
                (2, false, DpmSolverAlgorithm::SdeDpmSolverPlusPlus),
            ] {
                if karras && steps > 100 {
                    continue;
                }
                let cfg = DpmSolverMultistepConfig {
                    num_inference_steps: steps,
                    solver_order,
                    use_karras_sigmas: karras,
                    algorithm_type,
                    ..Default::default()
                };
                let out = run(&oracle, &cfg.init(&s, prediction_type).unwrap(), &request);
                for img in out.chunks(16) {
                    let d = max_diff(img, &target);
                    assert!(
                        d < 2e-3,
                        "DPM-Solver++ {prediction_type:?} {algorithm_type:?} order {solver_order} karras={karras} steps={steps}: {d}"
                    );
                }
            }
        }
    }
}

#[test]
fn first_order_dpm_solver_is_ddim_eta_zero_on_the_same_timesteps() {
    // `trailing` spacing is the same rule in both schedulers, and DDIM's final ᾱ = 1 is
    // DPM-Solver's final σ = 0; x_{t'} = (σ_{t'}/σ_t) x_t + (α_{t'} − α_t σ_{t'}/σ_t) x̂_0 is
    // DDIM's update written in x̂_0. Clipping x̂_0 matches DDIM re-deriving ε̂ from the clipped
    // x̂_0 (use_clipped_model_output).
    let s = schedule();
    let req = SampleRequest::new(SHAPE, None, 3).with_seed(21);
    for steps in [4, 10, 25] {
        for clip in [false, true] {
            let ddim = DdimSchedulerConfig {
                num_inference_steps: steps,
                timestep_spacing: TimestepSpacing::Trailing,
                clip_sample: clip,
                use_clipped_model_output: clip,
                ..Default::default()
            }
            .init(&s, PredictionType::Epsilon)
            .unwrap();
            let dpm = DpmSolverMultistepConfig {
                num_inference_steps: steps,
                solver_order: 1,
                timestep_spacing: TimestepSpacing::Trailing,
                thresholding: clip,
                ..Default::default()
            }
            .init(&s, PredictionType::Epsilon)
            .unwrap();
            assert_eq!(ddim.timesteps(), dpm.timesteps());
            let (a, b) = (run(&Linear, &ddim, &req), run(&Linear, &dpm, &req));
            let d = max_diff(&a, &b);
            assert!(
                d < 1e-4,
                "steps={steps} clip={clip}: DDIM vs DPM-Solver++ order 1: {d}"
            );
            // Not vacuous: the second-order solver differs.
            let dpm2 = DpmSolverMultistepConfig {
                num_inference_steps: steps,
                timestep_spacing: TimestepSpacing::Trailing,
                thresholding: clip,
                ..Default::default()
            }
            .init(&s, PredictionType::Epsilon)
            .unwrap();
            assert!(max_diff(&run(&Linear, &dpm2, &req), &a) > 1e-3);
        }
    }
}

#[test]
fn dpm_solver_through_sampler_settings() {
    // The user-facing settings: dpmsolver++ is deterministic and draws no noise after x_T;
    // sde-dpmsolver++ draws noise on every step but the last, is reproducible per seed, and
    // both parse from their names.
    let s = schedule();
    let settings = |sampler| SamplerSettings {
        sampler,
        num_inference_steps: 12,
        eta: 0.0,
        use_karras_sigmas: false,
    };
    let ode = settings(SamplerKind::from_name("dpmsolver++").unwrap())
        .scheduler(&s, PredictionType::Epsilon)
        .unwrap();
    let sde = settings(SamplerKind::from_name("sde-dpmsolver++").unwrap())
        .scheduler(&s, PredictionType::Epsilon)
        .unwrap();
    assert_eq!(ode.timesteps().len(), 12);
    assert!((0..12).all(|i| !ode.needs_noise(i)));
    assert!((0..11).all(|i| sde.needs_noise(i)) && !sde.needs_noise(11));
    let req = SampleRequest::new(SHAPE, None, 2).with_seed(4);
    assert_eq!(run(&Linear, &sde, &req), run(&Linear, &sde, &req));
    assert!(max_diff(&run(&Linear, &sde, &req), &run(&Linear, &ode, &req)) > 1e-3);
    assert!(SamplerKind::from_name("dpm++").is_err());
    // Karras noise levels: from t = T − 1 down to t = 0 (σ_min), then σ = 0.
    let karras = SamplerSettings {
        use_karras_sigmas: true,
        ..settings(SamplerKind::DpmSolverPlusPlus)
    }
    .scheduler(&s, PredictionType::Epsilon)
    .unwrap();
    let ts = karras.timesteps();
    assert_eq!((ts.len(), ts[0], ts[11]), (12, 999, 0));
    assert!(max_diff(&run(&Linear, &karras, &req), &run(&Linear, &ode, &req)) > 1e-3);
    let bad_eta = SamplerSettings {
        eta: -1.0,
        ..settings(SamplerKind::DpmSolverPlusPlus)
    };
    assert!(bad_eta.scheduler(&s, PredictionType::Epsilon).is_err());
    // Its x̂_0 is clipped to [-1, 1], like DDIM's.
    let device = Device::flex();
    let mut seen = 0;
    Sampling::new(&Linear, &ode, &req, &device)
        .unwrap()
        .run(|p| {
            let x0 = to_vec(p.pred_original_sample.clone());
            assert!(x0.iter().all(|v| v.abs() <= 1.0));
            seen += 1;
        });
    assert_eq!(seen, 12);
}
