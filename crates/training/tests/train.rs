//! End-to-end training on a 100-image fixture of the bundled MNIST-10k.

use std::path::PathBuf;

use burn::tensor::Device;
use diffusion::sampler::class_rows;
use diffusion::sampler::SamplerSettings;
use diffusion::weights::load_model;
use training::generate::generate;
use training::train::{train, Quiet, TrainConfig};

mod common;
use common::{fixture, run_dir, tiny_config, SERIAL};

#[test]
fn loss_decreases_on_a_fixture() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = run_dir("loss");
    let config = tiny_config(60);
    let s = train(&config, fixture(), &dir, None, &Device::flex(), &mut Quiet).unwrap();
    assert_eq!(s.steps, 60);
    assert_eq!(s.skipped_total, 0);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&s.losses[..10]), mean(&s.losses[50..]));
    assert!(last < 0.6 * first, "loss {first:.4} → {last:.4}");
    for f in [
        "config.json",
        "metrics.jsonl",
        "loss.png",
        "ema.safetensors",
        "ema.json",
        "samples/step-00000060.png",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn resume_reproduces_the_uninterrupted_run_and_export_matches_checkpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let config = tiny_config(12);
    let a = run_dir("full");
    let full = train(&config, fixture(), &a, None, &device, &mut Quiet).unwrap();
    // Resume from the step-6 checkpoint in a fresh directory.
    let b = run_dir("resumed");
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    let ckpt = a.join("checkpoints/step-00000006");
    let resumed = train(&config, fixture(), &b, Some(&ckpt), &device, &mut Quiet).unwrap();
    assert_eq!(resumed.losses.len(), 6);
    assert_eq!(
        resumed.losses,
        full.losses[6..].to_vec(),
        "resumed losses must equal the uninterrupted run's exactly"
    );

    // The exported EMA weights give the same samples as the run's final checkpoint EMA.
    let (exported, cfg) = load_model(&a.join("ema.safetensors"), &device).unwrap();
    let (_, _, ema, _) = training::checkpoint::load(
        &a.join("checkpoints/step-00000012"),
        &device.clone().autodiff(),
        &device,
    )
    .unwrap();
    let settings = SamplerSettings {
        num_inference_steps: 5,
        ..Default::default()
    };
    let sample = |m| {
        generate(
            m,
            &cfg,
            &settings,
            class_rows(3, 1),
            2.0,
            9,
            &device,
            |_| {},
        )
        .unwrap()
        .0
    };
    assert_eq!(sample(&exported), sample(&ema));

    // Same weights ⇒ same bytes: the resumed run's step-12 checkpoint (model, EMA, AdamW state),
    // its exported weights and its sample grid are the uninterrupted run's, byte for byte.
    for f in [
        "checkpoints/step-00000012/model.bpk",
        "checkpoints/step-00000012/ema.bpk",
        "checkpoints/step-00000012/optim.bpk",
        "ema.safetensors",
        "ema.json",
        "samples/step-00000012.png",
    ] {
        let read = |d: &PathBuf| std::fs::read(d.join(f)).unwrap();
        assert!(read(&a) == read(&b), "{f} differs between the two runs");
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn bf16_training_learns_keeps_f32_weights_and_resumes_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let mut config = tiny_config(60);
    config.precision = diffusion::Precision::Bf16;
    let a = run_dir("bf16");
    let full = train(&config, fixture(), &a, None, &device, &mut Quiet).unwrap();
    assert_eq!(full.skipped_total, 0);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&full.losses[..10]), mean(&full.losses[50..]));
    assert!(last < 0.6 * first, "loss {first:.4} → {last:.4}");
    // The run's record says how it computed; its weights are the f32 masters.
    let saved: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved.precision, diffusion::Precision::Bf16);
    // (The file's header, not a loaded model: loading casts to f32 whatever was stored.)
    let bytes = std::fs::read(a.join("ema.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let dtypes: Vec<&str> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap())
        .collect();
    assert!(
        !dtypes.is_empty() && dtypes.iter().all(|&d| d == "F32"),
        "{dtypes:?}"
    );
    // Resume from step 54 in a fresh directory: the same last six losses, bit for bit.
    let b = run_dir("bf16-resumed");
    let ckpt = a.join("checkpoints/step-00000054");
    let resumed = train(&config, fixture(), &b, Some(&ckpt), &device, &mut Quiet).unwrap();
    assert_eq!(resumed.losses, full.losses[54..].to_vec());
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}
