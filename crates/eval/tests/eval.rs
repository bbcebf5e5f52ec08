//! The evaluation classifier and the `eval` run end to end on tiny n.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use datasets::{DatasetSpec, Split};
use diffusion::sampler::SamplerSettings;
use diffusion::weights::load_model;
use eval::classifier::{
    load_classifier, predict_dataset, save_classifier, train_classifier, ClassifierTraining,
};
use eval::evaluate::{evaluate, write_report, EvalReport, EvalSettings};
use eval::inception::{default_weights_path, FidInception};

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("eval-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Equal JSON trees, numbers within a relative 1e-12.
fn assert_json_close(a: &serde_json::Value, b: &serde_json::Value) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()), "{x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).for_each(|(x, y)| assert_json_close(x, y));
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.iter().for_each(|(k, v)| assert_json_close(v, &y[k]));
        }
        _ => assert_eq!(a, b),
    }
}

#[test]
fn classifier_learns_a_fixture_and_round_trips() {
    let device = Device::flex();
    let spec = DatasetSpec::Mnist10k;
    let train = spec.load(Split::Train).unwrap().take(2000);
    let test = spec.load(Split::Test).unwrap().take(500);
    let settings = ClassifierTraining {
        epochs: 3,
        ..ClassifierTraining::default()
    };
    let mut losses = Vec::new();
    let (model, info) = train_classifier(&train, &test, "mnist10k", &settings, &device, |p| {
        if p.done == p.total {
            losses.push(p.loss)
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 3);
    assert!(losses[2] < losses[0], "loss did not fall: {losses:?}");
    assert!(
        info.test_accuracy >= 0.90,
        "accuracy {}",
        info.test_accuracy
    );

    let dir = tmp("classifier");
    let path = dir.join("c.safetensors");
    save_classifier(&model, &info, &path).unwrap();
    let (loaded, loaded_info) = load_classifier(&path, &device).unwrap();
    assert_eq!(loaded_info, info);
    let (p1, f1) = predict_dataset(&model, &test.take(50), 25, &device);
    let (p2, f2) = predict_dataset(&loaded, &test.take(50), 25, &device);
    assert_eq!((p1, f1), (p2, f2));

    // Truncated weights: one clear line naming the file.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_classifier(&path, &device).unwrap_err().to_string();
    assert!(e.contains("c.safetensors") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

/// The shipped MNIST model, its evaluation classifier, and the FID Inception where its weights
/// are cached (see tests/inception.rs).
fn shipped(
    device: &Device,
) -> (
    diffusion::UNet,
    diffusion::ModelConfig,
    (
        eval::classifier::Classifier,
        eval::classifier::ClassifierInfo,
    ),
    Option<FidInception>,
) {
    let (model, config) = load_model(&repo().join("weights/mnist.safetensors"), device).unwrap();
    let classifier = load_classifier(
        &repo().join("weights/classifier-mnist10k.safetensors"),
        device,
    )
    .unwrap();
    let inception = default_weights_path()
        .exists()
        .then(|| FidInception::load(&default_weights_path(), device).unwrap());
    (model, config, classifier, inception)
}

#[test]
fn eval_runs_end_to_end_on_tiny_n() {
    let device = Device::flex();
    let (model, config, classifier, inception) = shipped(&device);
    let out = tmp("run");
    let settings = EvalSettings {
        dataset: "mnist10k".into(),
        n: 20,
        batch: 10,
        sampler: SamplerSettings {
            num_inference_steps: 10,
            ..SamplerSettings::default()
        },
        guidance: vec![1.0, 3.0],
        seeds: vec![7],
        classifier: Some(classifier),
        inception,
        inception_batch: 10,
        splits: 2,
        stats_cache: Some(out.join("stats")),
        chunks: None,
        model_id: "mnist".into(),
        stop: None,
    };
    let mut stages = Vec::new();
    let (report, samples) = evaluate(
        &model,
        &config,
        "mnist",
        &settings,
        &device,
        &mut |s, _, _| {
            if stages.last().map(String::as_str) != Some(s) {
                stages.push(s.to_string())
            }
        },
    )
    .unwrap();
    assert_eq!(
        (report.n, report.n_reference, report.n_baseline),
        (20, 20, 20)
    );
    assert_eq!(report.rows.len(), 2);
    let b = &report.baseline;
    assert!(b.classifier_accuracy.unwrap() > 0.9, "{b:?}");
    assert!(b.domain_fid.unwrap() >= 0.0);
    for row in &report.rows {
        let s = &row.scores;
        let acc = s.classifier_accuracy.unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(s.domain_fid.unwrap().is_finite() && s.domain_fid.unwrap() >= 0.0);
        let cs = s.classifier_score.unwrap();
        assert!((1.0..=10.0).contains(&cs), "{cs}");
        assert_eq!(s.inception_fid.is_some(), settings.inception.is_some());
    }
    if settings.inception.is_some() {
        // Cached real statistics are reused by a second run.
        assert!(std::fs::read_dir(out.join("stats")).unwrap().count() >= 2);
        assert!(report.baseline.inception_fid.unwrap() > 0.0);
    }
    let files = write_report(&report, &samples, &out, true).unwrap();
    for name in [
        "eval.json",
        "eval.md",
        "samples-w1.png",
        "samples-w3.png",
        "samples-w3.npy",
        "guidance-sweep.png",
    ] {
        assert!(
            files.contains(&out.join(name)),
            "{name} missing from {files:?}"
        );
    }
    let back: EvalReport =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    // serde_json parses f64 to within an ulp (no `float_roundtrip`): compare to 1e-12.
    assert_json_close(
        &serde_json::to_value(&back).unwrap(),
        &serde_json::to_value(&report).unwrap(),
    );
    // Same seed ⇒ the same samples and scores.
    let mut settings2 = settings.clone();
    settings2.guidance = vec![3.0];
    let (again, _) = evaluate(
        &model,
        &config,
        "mnist",
        &settings2,
        &device,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(again.rows[0].scores, report.rows[1].scores);
    std::fs::remove_dir_all(out).ok();
}

/// A report without its timings (which a resumed run measures for its own part only).
fn untimed(r: &EvalReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    v["total_s"] = 0.into();
    for row in v["rows"].as_array_mut().unwrap() {
        row["sample_s"] = 0.into();
        row["inception_s"] = 0.into();
    }
    v
}

#[test]
fn a_stopped_eval_resumes_from_its_chunks_and_gives_the_same_report() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let device = Device::flex();
    let (model, config, classifier, inception) = shipped(&device);
    let out = tmp("resume");
    let settings = |name: &str| EvalSettings {
        dataset: "mnist10k".into(),
        n: 30,
        batch: 10,
        sampler: SamplerSettings {
            num_inference_steps: 4,
            ..SamplerSettings::default()
        },
        guidance: vec![3.0],
        seeds: vec![1, 2],
        classifier: Some(classifier.clone()),
        inception: inception.clone(),
        inception_batch: 10,
        splits: 2,
        stats_cache: Some(out.join(name).join("stats")),
        chunks: Some(eval::chunks::ChunkStore::new(out.join(name).join("chunks"))),
        model_id: "the shipped mnist".into(),
        stop: None,
    };
    let run = |s: &EvalSettings, seen: &mut Vec<(String, usize)>| {
        evaluate(
            &model,
            &config,
            "mnist",
            s,
            &device,
            &mut |stage, done, _| seen.push((stage.to_string(), done)),
        )
    };
    // In one go.
    let whole = settings("whole");
    let (report, _) = run(&whole, &mut Vec::new()).unwrap();
    assert_eq!(report.rows.len(), 2);
    assert_eq!(report.seeds, vec![1, 2]);
    let summary = &report.summary[0];
    let fids: Vec<f64> = report
        .rows
        .iter()
        .map(|r| r.scores.domain_fid.unwrap())
        .collect();
    assert!((summary.mean.domain_fid.unwrap() - (fids[0] + fids[1]) / 2.0).abs() < 1e-9);
    let sd = (fids[0] - fids[1]).abs() / 2f64.sqrt();
    assert!(
        (summary.std.domain_fid.unwrap() - sd).abs() < 1e-9,
        "{summary:?}"
    );
    // Stopped once the second sampling batch of the first seed is done (as a signal would).
    let stop = Arc::new(AtomicBool::new(false));
    let mut stopped = settings("stopped");
    stopped.stop = Some(stop.clone());
    let e = evaluate(
        &model,
        &config,
        "mnist",
        &stopped,
        &device,
        &mut |stage, done, _| {
            if stage.starts_with("sampling") && done >= 20 {
                stop.store(true, Ordering::SeqCst)
            }
        },
    )
    .unwrap_err();
    assert!(matches!(e, eval::EvalError::Stopped(_)), "{e}");
    assert!(e.to_string().contains("20 of 30 samples"), "{e}");
    let kept = std::fs::read_dir(out.join("stopped/chunks"))
        .unwrap()
        .count();
    assert_eq!(kept, 2, "the two finished batches are kept");
    // Resumed: the kept batches are not sampled again, and the report is the same.
    stopped.stop = None;
    let mut seen = Vec::new();
    let (resumed, _) = run(&stopped, &mut seen).unwrap();
    let first = seen
        .iter()
        .find(|(s, _)| s.starts_with("sampling"))
        .unwrap();
    assert_eq!(
        first.1, 20,
        "the resumed run starts after the kept batches: {seen:?}"
    );
    assert_eq!(untimed(&resumed), untimed(&report));
    // A different setting does not take the kept chunks for its own.
    let mut other = settings("stopped");
    other.sampler.num_inference_steps = 3;
    other.seeds = vec![1];
    let mut seen = Vec::new();
    run(&other, &mut seen).unwrap();
    assert_eq!(
        seen.iter()
            .find(|(s, _)| s.starts_with("sampling"))
            .unwrap()
            .1,
        0
    );
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_settings_are_clear_errors() {
    let device = Device::flex();
    let (model, config) = load_model(&repo().join("weights/mnist.safetensors"), &device).unwrap();
    let mut settings = EvalSettings {
        dataset: "mnist10k".into(),
        n: 1,
        batch: 10,
        sampler: SamplerSettings::default(),
        guidance: vec![1.0],
        seeds: vec![0],
        classifier: None,
        inception: None,
        inception_batch: 10,
        splits: 10,
        stats_cache: None,
        chunks: None,
        model_id: "m".into(),
        stop: None,
    };
    let e = evaluate(&model, &config, "m", &settings, &device, &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("n ≥ 2"), "{e}");
    settings.n = 4;
    settings.dataset = "cifar10:/nonexistent".into();
    let e = evaluate(&model, &config, "m", &settings, &device, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent") && !e.contains('\n'), "{e}");
}
