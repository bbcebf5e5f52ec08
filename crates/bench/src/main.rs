//! `bench`: times the U-Net on a Burn backend and writes the medians as JSON.
//!
//! Cases (named as in `../shared/bench/ref_unet.py`'s results, `S` = our `mnist` preset = the
//! reference's S with FiLM): training step at batch 32 and 128, forward at batch 1/16/64,
//! 50-step DDIM + guidance at batch 16, the `cifar10_ddpm` forward at batch 16, and an fp32
//! 2048² matmul for the machine's peak.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bench::cases::{forward, guided_sampling, train_step};
use bench::flops::{unet_forward_flops, unet_train_flops};
use bench::timing::{bench, Reps, Timing};
use burn::tensor::Tensor;
use clap::Parser;
use diffusion::sampler::{SamplerKind, SamplerSettings};
use diffusion::{Precision, UNetConfig};
use serde_json::{json, Map, Value};

/// Time training, forward and sampling of the U-Net (medians after warm-up).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Sections: any of `matmul,forward,train,ddim,dpm,cifar`, `cifar-train` (the
    /// `cifar10_ddpm` training step at `--cifar-train-batch`; for GPUs) and `inception` (the
    /// FID Inception's features of 28×28 images, fast kernels against Burn's ops, CPU only;
    /// needs `python3 scripts/fetch-inception.py`). Single kernels against Burn's ops:
    /// `cargo bench -p flex-kernels`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "matmul,forward,train,ddim,dpm,cifar"
    )]
    sections: Vec<String>,
    /// Device: `cpu` (flex), `wgpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Smoke test: one warm-up and two timed runs per case.
    #[arg(long)]
    quick: bool,
    /// Training-step batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "32,128")]
    train_batches: Vec<usize>,
    /// Forward-pass batch sizes (`forward` section); the per-image cost across them is what
    /// batching requests in the server can gain.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    forward_batches: Vec<usize>,
    /// Batch of the `cifar-train` section.
    #[arg(long, default_value_t = 128)]
    cifar_train_batch: usize,
    /// Images per run of the `ddim` and `dpm` sections (guidance doubles the forward's batch).
    #[arg(long, default_value_t = 16)]
    sample_batch: usize,
    /// Compute dtype of the training steps (`train`, `cifar-train`): `f32`, or `bf16` (mixed
    /// precision, as `trainer train --precision bf16`).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Also time the trainer's full step (with global grad-norm clip and EMA update).
    #[arg(long)]
    full_step: bool,
    /// Write the results here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn reps(quick: bool, warmup: usize, min_reps: usize, max_reps: usize, target_s: f64) -> Reps {
    if quick {
        Reps {
            warmup: 1,
            min_reps: 2,
            max_reps: 2,
            target_s: 0.0,
        }
    } else {
        Reps {
            warmup,
            min_reps,
            max_reps,
            target_s,
        }
    }
}

fn record(t: &Timing, images: usize, flops_per_image: f64) -> Value {
    json!({
        "median_s": t.median_s, "min_s": t.min_s, "max_s": t.max_s, "reps": t.reps,
        "ms": t.median_s * 1e3,
        "img_per_s": images as f64 / t.median_s,
        "gflops_per_s": flops_per_image * images as f64 / t.median_s / 1e9,
    })
}

fn main() -> Result<()> {
    flex_kernels::allocator::retain_freed_memory();
    let cli = Cli::parse();
    if cli.sample_batch == 0
        || cli.cifar_train_batch == 0
        || cli.train_batches.contains(&0)
        || cli.forward_batches.contains(&0)
    {
        anyhow::bail!("batch sizes must be at least 1");
    }
    let device = training::device::parse_device(&cli.device)?;
    let precision: Precision = cli.precision.parse()?;
    let has = |s: &str| cli.sections.iter().any(|x| x == s);
    let s = UNetConfig::mnist();
    let mut res = Map::new();
    res.insert(
        "env".into(),
        json!({ "device": cli.device, "backend": "burn 0.22.1", "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "quick": cli.quick, "precision": precision.to_string() }),
    );
    res.insert(
        "flops".into(),
        json!({ "S": { "fwd_flops_per_image": unet_forward_flops(&s), "train_fwd_bwd_flops_per_image": unet_train_flops(&s) },
                "CIFAR10_DDPM": { "fwd_flops_per_image": unet_forward_flops(&UNetConfig::cifar10_ddpm()) } }),
    );
    let save = |res: &Map<String, Value>| -> Result<()> {
        if let Some(p) = &cli.out {
            let text = serde_json::to_string_pretty(res)?;
            artifacts::write_atomic(p, text.as_bytes())
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    };
    if has("matmul") {
        let n = 2048;
        let a = Tensor::<2>::ones([n, n], &device);
        let b = Tensor::<2>::ones([n, n], &device);
        let t = bench(reps(cli.quick, 2, 10, 30, 4.0), || {
            let _ = a
                .clone()
                .matmul(b.clone())
                .slice([0..1, 0..1])
                .into_scalar::<f32>();
        });
        let gflops = 2.0 * (n as f64).powi(3) / t.median_s / 1e9;
        println!(
            "matmul fp32 {n}²: {gflops:.1} GFLOP/s ({:.1} ms)",
            t.median_s * 1e3
        );
        res.insert(
            "matmul_fp32".into(),
            json!({ "2048x2048": { "median_s": t.median_s, "gflops": gflops, "reps": t.reps } }),
        );
        save(&res)?;
    }
    if has("forward") {
        let mut m = Map::new();
        for &b in &cli.forward_batches {
            let t = bench(reps(cli.quick, 3, 7, 50, 8.0), forward(&s, b, &device));
            let r = record(&t, b, unet_forward_flops(&s));
            println!(
                "forward S b{b}: {:.2} ms  {:.1} img/s  {:.1} GFLOP/s",
                r["ms"].as_f64().unwrap(),
                r["img_per_s"].as_f64().unwrap(),
                r["gflops_per_s"].as_f64().unwrap()
            );
            m.insert(format!("S_b{b}"), r);
            res.insert("forward".into(), Value::Object(m.clone()));
            save(&res)?;
        }
    }
    if has("train") {
        let mut m = Map::new();
        for &b in &cli.train_batches {
            for full in [false, true] {
                if full && !cli.full_step {
                    continue;
                }
                let t = bench(
                    reps(cli.quick, 3, 7, 30, 20.0),
                    train_step(&s, b, full, precision, &device),
                );
                let r = record(&t, b, unet_train_flops(&s));
                let name = if full {
                    format!("S_b{b}_full")
                } else {
                    format!("S_b{b}")
                };
                println!(
                    "train {name} {precision}: {:.1} ms/step  {:.1} img/s  {:.1} GFLOP/s",
                    r["ms"].as_f64().unwrap(),
                    r["img_per_s"].as_f64().unwrap(),
                    r["gflops_per_s"].as_f64().unwrap()
                );
                m.insert(name, r);
                res.insert("train".into(), Value::Object(m.clone()));
                save(&res)?;
            }
        }
    }
    for (section, sampler, steps) in [
        ("ddim", SamplerKind::Ddim, 50),
        ("dpm", SamplerKind::DpmSolverPlusPlus, 15),
    ] {
        if !has(section) {
            continue;
        }
        let b = cli.sample_batch;
        let settings = SamplerSettings {
            sampler,
            num_inference_steps: steps,
            eta: 0.0,
            use_karras_sigmas: false,
        };
        let t = bench(
            reps(cli.quick, 1, 3, 5, 60.0),
            guided_sampling(&s, b, settings, &device),
        );
        let mut r = record(&t, b, unet_forward_flops(&s) * 2.0 * steps as f64);
        r["s"] = json!(t.median_s);
        r["ms_per_step"] = json!(t.median_s / steps as f64 * 1e3);
        println!(
            "{section} S b{b} x{steps} CFG: {:.2} s ({:.1} ms/step, {:.1} GFLOP/s)",
            t.median_s,
            t.median_s / steps as f64 * 1e3,
            r["gflops_per_s"].as_f64().unwrap()
        );
        res.insert(
            section.into(),
            json!({ format!("S_b{b}_{steps}steps_cfg"): r }),
        );
        save(&res)?;
    }
    if has("cifar") {
        let c = UNetConfig::cifar10_ddpm();
        let t = bench(reps(cli.quick, 1, 3, 10, 10.0), forward(&c, 16, &device));
        let r = record(&t, 16, unet_forward_flops(&c));
        println!(
            "forward CIFAR10_DDPM b16: {:.0} ms  {:.1} img/s  {:.1} GFLOP/s",
            r["ms"].as_f64().unwrap(),
            r["img_per_s"].as_f64().unwrap(),
            r["gflops_per_s"].as_f64().unwrap()
        );
        let mut fw = res
            .get("forward")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        fw.insert("CIFAR10_DDPM_b16".into(), r);
        res.insert("forward".into(), Value::Object(fw));
        save(&res)?;
    }
    if has("cifar-train") {
        let c = UNetConfig::cifar10_ddpm();
        let b = cli.cifar_train_batch;
        let t = bench(
            reps(cli.quick, 3, 7, 30, 20.0),
            train_step(&c, b, false, precision, &device),
        );
        let r = record(&t, b, unet_train_flops(&c));
        println!(
            "train CIFAR10_DDPM b{b} {precision}: {:.1} ms/step  {:.1} img/s  {:.1} GFLOP/s",
            r["ms"].as_f64().unwrap(),
            r["img_per_s"].as_f64().unwrap(),
            r["gflops_per_s"].as_f64().unwrap()
        );
        let mut tr = res
            .get("train")
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        tr.insert(format!("CIFAR10_DDPM_b{b}"), r);
        res.insert("train".into(), Value::Object(tr));
        save(&res)?;
    }
    if has("inception") {
        res.insert("inception".into(), inception(&cli, &device)?);
        save(&res)?;
    }
    Ok(())
}

/// The FID Inception's features of 32 grey 28×28 images at batch 16 (what `trainer eval`
/// runs): the fast convolution kernels against Burn's own ops, alternating.
fn inception(cli: &Cli, device: &burn::tensor::Device) -> Result<Value> {
    let path = eval::inception::default_weights_path();
    let net = eval::inception::FidInception::load(&path, device)?;
    let (n, batch) = (32, 16);
    let mut rng = portable_rng::NoiseRng::new(7);
    let images: Vec<f32> = (0..n * 28 * 28).map(|_| rng.uniform() as f32).collect();
    let mut run = || {
        net.features(&images, [n, 1, 28, 28], batch, |_| {})
            .expect("features");
    };
    let r = reps(cli.quick, 1, 3, 5, 30.0);
    let mut out = Map::new();
    let (mut fast, mut burn) = (Vec::new(), Vec::new());
    // Rounds alternate the two paths so that drift hits both alike.
    for _ in 0..if cli.quick { 1 } else { 2 } {
        fast.push(bench(r, &mut run));
        burn.push(bench(r, || flex_kernels::with_burn_ops(&mut run)));
    }
    for (name, t) in [("fast_kernels", &fast), ("burn_ops", &burn)] {
        // The rounds' medians, averaged.
        let median = t.iter().map(|t| t.median_s).sum::<f64>() / t.len() as f64;
        println!(
            "inception {name} b{batch}: {:.1} img/s ({:.2} s per {n} images; rounds: {})",
            n as f64 / median,
            median,
            t.iter()
                .map(|t| format!("{:.2}", t.median_s))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.insert(
            name.into(),
            json!({ "img_per_s": n as f64 / median, "s_per_32": median, "rounds": t }),
        );
    }
    Ok(Value::Object(out))
}
