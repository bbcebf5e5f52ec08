//! Data-parallel training on the CPU (`--devices cpu,cpu`: two ranks, the host reducer) against
//! one device on the same global batches, and its exact resume.

use std::path::Path;

use burn::tensor::Device;
use diffusion::weights::load_model;
use training::train::{train_on, Quiet, TrainConfig};

mod common;
use common::{fixture, run_dir, tiny_config, SERIAL};

/// The fixture's tiny model without dropout (the ranks' masks would be their own seeds', not
/// one device's), global batch 8, with a gradient clip that bites.
fn config(steps: u64) -> TrainConfig {
    let mut c = tiny_config(steps);
    c.model.unet.dropout = 0.0;
    c.grad_clip = 0.5;
    c.checkpoint_every = 10;
    c.seed = 23;
    c
}

/// `(step, loss, grad_norm)` of every logged step.
fn metrics(dir: &Path) -> Vec<(u64, f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                v["grad_norm"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Every tensor of the exported EMA weights, as host values by name.
fn ema_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("ema.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// ‖a − b‖ / ‖a‖.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

#[test]
fn two_cpu_ranks_train_as_one_device_on_the_same_global_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    let c = config(20);
    let one = run_dir("one");
    let two = run_dir("two");
    train_on(&c, fixture(), &one, None, &[cpu.clone()], false, &mut Quiet).unwrap();
    train_on(
        &c,
        fixture(),
        &two,
        None,
        &[cpu.clone(), cpu.clone()],
        true,
        &mut Quiet,
    )
    .unwrap();
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert_eq!(m1.len(), 20);
    assert_eq!(m1.len(), m2.len());
    let mut clipped = 0;
    for ((s, l1, g1), (_, l2, g2)) in m1.iter().zip(&m2) {
        // The loss of the global batch and the global gradient norm (before the clip).
        assert!(
            (l1 - l2).abs() <= 1e-5 * l1.abs(),
            "step {s}: loss {l1} vs {l2}"
        );
        assert!(
            (g1 - g2).abs() <= 1e-5 * g1.abs(),
            "step {s}: grad norm {g1} vs {g2}"
        );
        clipped += usize::from(*g1 > 0.5);
    }
    assert!(clipped > 0, "the clip never acted: {m1:?}");
    // The EMA weights after 20 steps, all tensors together: ‖Δ‖ / ‖θ‖. (Per tensor, a few
    // parameters whose gradients nearly cancel — e.g. a bias that the next GroupNorm removes,
    // ‖θ‖ ≈ 2e-4 — differ by more: AdamW divides their noise-sized gradients by their own
    // scale, so the reassociation's last bits become whole updates.)
    let (e1, e2) = (ema_tensors(&one), ema_tensors(&two));
    assert_eq!(e1.len(), e2.len());
    let flat =
        |e: &[(String, Vec<f32>)]| -> Vec<f32> { e.iter().flat_map(|(_, v)| v.clone()).collect() };
    let r = relative(&flat(&e1), &flat(&e2));
    eprintln!("EMA after 20 steps, 2 ranks against one device: relative difference {r:.2e}");
    assert!(r <= 1e-5, "EMA: relative difference {r:.2e}");
    // They differ at all only by float reassociation: the runs are not the same bytes.
    assert!(
        e1 != e2 || m1 != m2,
        "two ranks gave one device's bits exactly"
    );
    // One rank through the reducer (what `--devices cuda:0` runs on a single GPU): the
    // reduction is the identity, so the bits are one device's.
    let one_rank = run_dir("one-rank");
    train_on(
        &c,
        fixture(),
        &one_rank,
        None,
        &[cpu.clone()],
        true,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(metrics(&one_rank), m1);
    assert_eq!(ema_tensors(&one_rank), e1);
    std::fs::remove_dir_all(one_rank).unwrap();
    // The run records its ranks; one device records nothing (its config keeps its bytes).
    let cfg = |d: &Path| std::fs::read_to_string(d.join("config.json")).unwrap();
    assert!(cfg(&two).contains("\"data_parallel_ranks\": 2"));
    assert!(!cfg(&one).contains("data_parallel_ranks"));
    for d in [one, two] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn two_cpu_ranks_resume_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = Device::flex();
    let ranks = [cpu.clone(), cpu.clone()];
    // With dropout: each rank's masks come from its own seed, drawn in turn from Burn's one CPU
    // generator, so the run is a function of its config whatever the threads' timing.
    let mut c = config(20);
    c.model.unet.dropout = 0.1;
    let full = run_dir("dp-full");
    train_on(&c, fixture(), &full, None, &ranks, true, &mut Quiet).unwrap();
    // Resumed from the step-10 checkpoint, in another directory.
    let resumed = run_dir("dp-resumed");
    train_on(
        &c,
        fixture(),
        &resumed,
        Some(&full.join("checkpoints/step-00000010")),
        &ranks,
        true,
        &mut Quiet,
    )
    .unwrap();
    let after = |d: &Path| -> Vec<(u64, f64, f64)> {
        metrics(d).into_iter().filter(|m| m.0 >= 10).collect()
    };
    assert_eq!(after(&full), after(&resumed), "losses after the resume");
    assert_eq!(
        ema_tensors(&full),
        ema_tensors(&resumed),
        "EMA after the resume"
    );
    // The weights load as an ordinary model.
    load_model(&resumed.join("ema.safetensors"), &cpu).unwrap();
    // Bad settings are clear errors.
    let mut odd = config(2);
    odd.batch_size = 7;
    let e = train_on(
        &odd,
        fixture(),
        &run_dir("odd"),
        None,
        &ranks,
        true,
        &mut Quiet,
    )
    .unwrap_err();
    assert!(e.to_string().contains("split evenly"), "{e}");
    for d in [full, resumed] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
