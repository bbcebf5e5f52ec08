//! The `train-classifier`, `eval` and `eval-compare` subcommands.

use std::path::PathBuf;

use crate::progress::bar;
use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Args};
use datasets::{DatasetSpec, Split};
use diffusion::weights::load_model;
use eval::chunks::ChunkStore;
use eval::classifier::{load_classifier, save_classifier, train_classifier, ClassifierTraining};
use eval::compare::{compare, compare_markdown, read_report, write_comparison};
use eval::evaluate::{evaluate, markdown, write_report, EvalSettings};
use eval::inception::{default_weights_path, FidInception};

#[derive(Args)]
pub struct TrainClassifierArgs {
    /// Dataset with train and test splits: `mnist10k`, `fashion-mnist[:DIR]` or `cifar10:DIR`.
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Output weights (`NAME.safetensors`; `NAME.json` is written beside it) [default:
    /// weights/classifier-KIND.safetensors, KIND = mnist10k, fashion-mnist, …].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passes over the train split.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// AdamW learning rate (the last epoch uses a tenth).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Random shifts of up to this many pixels (augmentation; 0 = off).
    #[arg(long, default_value_t = 2)]
    max_shift: usize,
    /// Random horizontal flips (for clothes, not for digits).
    #[arg(long)]
    hflip: bool,
    /// Seed of initialisation, order, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Refuse to save a classifier whose test accuracy is below this (0–1).
    #[arg(long, default_value_t = 0.0)]
    min_accuracy: f64,
    /// Device: `cpu`, `wgpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `weights/classifier-KIND.safetensors`: where the classifier of a dataset's kind is shipped
/// (and made), so that `--dataset` alone picks the matching one.
fn default_classifier(dataset: &str) -> Result<PathBuf> {
    let kind = DatasetSpec::parse(dataset, 32, 3)?.kind();
    Ok(PathBuf::from(format!(
        "weights/classifier-{kind}.safetensors"
    )))
}

pub fn cmd_train_classifier(a: TrainClassifierArgs) -> Result<()> {
    let device = training::device::parse_device(&a.device)?;
    let settings = ClassifierTraining {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        max_shift: a.max_shift,
        hflip: a.hflip,
        seed: a.seed,
    };
    settings.validate()?;
    let out = a
        .out
        .clone()
        .map_or_else(|| default_classifier(&a.dataset), Ok)?;
    let spec = DatasetSpec::parse(&a.dataset, 32, 3)?;
    let train = spec.load(Split::Train)?;
    let test = spec.load(Split::Test)?;
    eprintln!(
        "training a classifier on {} ({} images), testing on {} ({} images)",
        train.name,
        train.len(),
        test.name,
        test.len()
    );
    let started = std::time::Instant::now();
    let pb = bar((train.len() * a.epochs) as u64);
    let (model, info) = train_classifier(&train, &test, &a.dataset, &settings, &device, |p| {
        pb.set_position((p.epoch * p.total + p.done) as u64);
        pb.set_message(format!("epoch {} loss {:.4}", p.epoch + 1, p.loss));
    })?;
    pb.finish_and_clear();
    eprintln!(
        "test accuracy {:.2} % ({} test images) after {:.0} s",
        info.test_accuracy * 100.0,
        test.len(),
        started.elapsed().as_secs_f64()
    );
    if info.test_accuracy < a.min_accuracy {
        bail!(
            "test accuracy {:.2} % is below --min-accuracy {:.2} %; nothing written",
            info.test_accuracy * 100.0,
            a.min_accuracy * 100.0
        );
    }
    save_classifier(&model, &info, &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model weights (`NAME.safetensors` with `NAME.json`).
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// The real data to compare with (train split = FID reference, test split = baseline).
    #[arg(long, default_value = "mnist10k")]
    dataset: String,
    /// Samples per guidance scale (10,000 is the usual FID size; small n biases FID up).
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    #[command(flatten)]
    sampler: crate::flags::SamplerFlags,
    /// Guidance scale w.
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Evaluate several guidance scales (e.g. `0,1,2,3,5`) and plot FID against accuracy.
    #[arg(long, value_delimiter = ',')]
    guidance_sweep: Option<Vec<f64>>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0, conflicts_with = "seeds")]
    seed: u64,
    /// Several sampling seeds (e.g. `0,1,2`): every guidance scale is sampled n times per
    /// seed, and the report gives each score as mean ± standard deviation over the seeds.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Images per sampling batch: the unit of work kept on disk (`OUT/chunks/`) as soon as it
    /// is done, so a stopped run (Ctrl-C, SIGTERM) resumes when the same command runs again.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 16)]
    inception_batch: usize,
    /// The evaluation classifier (from `train-classifier`) [default: the shipped one of the
    /// dataset's kind, weights/classifier-KIND.safetensors].
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Skip the classifier metrics.
    #[arg(long)]
    no_classifier: bool,
    /// FID Inception weights [default: the cache path of `scripts/fetch-inception.py`].
    #[arg(long)]
    inception_weights: Option<PathBuf>,
    /// Skip the Inception FID (no weights needed).
    #[arg(long)]
    no_inception: bool,
    /// Output directory for eval.json, eval.md, sample grids and the sweep plot, and the
    /// finished chunks of a run (`chunks/`), which a rerun of the same command resumes from.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
    /// Device: `cpu`, `wgpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also write every sample of the first seed as `samples-wW.npy` (float32 [n, c, h, w] in
    /// [-1, 1], the 8-bit images scored): what `scripts/backgrounds.py` reads.
    #[arg(long)]
    npy: bool,
}

/// The SHA-256 of a file (hex): what names a model in the chunks of its evaluation.
fn file_sha256(path: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub fn cmd_eval(a: EvalArgs, m: &ArgMatches) -> Result<()> {
    crate::flag_rules::print_notes(&crate::flag_rules::eval(m)?);
    let device = training::device::parse_device(&a.device)?;
    let (model, config) = load_model(&a.weights, &device)?;
    let sampler = a.sampler.settings(&config)?;
    let guidance = a.guidance_sweep.clone().unwrap_or_else(|| vec![a.guidance]);
    if let Some(w) = guidance.iter().find(|w| !w.is_finite()) {
        bail!("guidance scale {w} is not finite");
    }
    let classifier = if a.no_classifier {
        None
    } else {
        let path = a
            .classifier
            .clone()
            .map_or_else(|| default_classifier(&a.dataset), Ok)?;
        Some(load_classifier(&path, &device).with_context(|| {
            format!(
                "loading the classifier (make it with `trainer train-classifier --dataset {} --out {}`, or pass --no-classifier)",
                a.dataset,
                path.display()
            )
        })?)
    };
    let inception = if a.no_inception {
        None
    } else {
        let path = a
            .inception_weights
            .clone()
            .unwrap_or_else(default_weights_path);
        Some(FidInception::load(&path, &device).context("or pass --no-inception")?)
    };
    let stop = crate::signals::StopSignal::install()?;
    let settings = EvalSettings {
        dataset: a.dataset.clone(),
        n: a.n,
        batch: a.batch,
        sampler,
        guidance,
        seeds: a.seeds.clone().unwrap_or_else(|| vec![a.seed]),
        classifier,
        inception,
        inception_batch: a.inception_batch,
        splits: 10,
        stats_cache: None,
        chunks: Some(ChunkStore::new(a.out.join("chunks"))),
        model_id: file_sha256(&a.weights)?,
        stop: Some(stop.flag()),
    };
    let pb = bar(a.n as u64);
    let mut stage = String::new();
    // Per stage: when it started and how much was done then (finished chunks of an earlier
    // run count at once), for the estimate of what is left.
    let mut since = (std::time::Instant::now(), 0usize);
    let mut last_line = std::time::Instant::now();
    let (report, samples) = evaluate(
        &model,
        &config,
        &a.weights.display().to_string(),
        &settings,
        &device,
        &mut |s, done, total| {
            if s != stage {
                stage = s.to_string();
                pb.set_length(total as u64);
                pb.set_position(done as u64);
                pb.reset_eta();
                pb.set_message(stage.clone());
                since = (std::time::Instant::now(), done);
                if done > 0 {
                    pb.println(format!("{stage}: {done} of {total} done by an earlier run"));
                }
            }
            pb.set_position(done as u64);
            // Without a terminal (a log file): a line with the estimate every 30 s.
            if pb.is_hidden() && last_line.elapsed().as_secs() >= 30 && done > since.1 {
                last_line = std::time::Instant::now();
                let rate = (done - since.1) as f64 / since.0.elapsed().as_secs_f64();
                eprintln!(
                    "{stage}: {done}/{total}, {:.0} s left",
                    (total - done) as f64 / rate
                );
            }
        },
    )
    .map_err(|e| match e {
        eval::EvalError::Stopped(why) => anyhow::Error::new(crate::signals::Stopped {
            signal: stop.received().unwrap_or_else(|| "SIGTERM".into()),
            message: why,
        }),
        e => e.into(),
    })?;
    pb.finish_and_clear();
    let files = write_report(&report, &samples, &a.out, a.npy)?;
    println!("{}", markdown(&report));
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalCompareArgs {
    /// The reports: `eval.json` files written by `trainer eval`, one sampler setting each.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Output directory for compare.json, compare.md and the FID-vs-model-calls plots.
    #[arg(long, default_value = "runs/eval-compare")]
    out: PathBuf,
}

pub fn cmd_eval_compare(a: EvalCompareArgs) -> Result<()> {
    let reports = a
        .reports
        .iter()
        .map(|p| Ok((p.clone(), read_report(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let comparison = compare(&reports)?;
    let files = write_comparison(&comparison, &a.out)?;
    println!("{}", compare_markdown(&comparison));
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct EvalEditArgs {
    /// The model (`NAME.safetensors` with `NAME.json`); sampled without a class.
    #[arg(long, default_value = "weights/mnist.safetensors")]
    weights: PathBuf,
    /// The evaluation classifier that reads the results.
    #[arg(long, default_value = "weights/classifier-mnist10k.safetensors")]
    classifier: PathBuf,
    /// Held-out digits (the first N of the bundled MNIST-10k's test split).
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// SDEdit strengths to measure.
    #[arg(long, value_delimiter = ',', default_value = "0.4,0.5,0.6,0.7,0.8,0.9")]
    strengths: Vec<f64>,
    /// SDEdit's sampler.
    #[arg(long, default_value = "ddpm")]
    sampler: String,
    /// SDEdit's steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// SDEdit with DPM-Solver++'s Karras noise levels (the page's default: `--sampler
    /// sde-dpmsolver++ --karras-sigmas --steps 15`).
    #[arg(long)]
    karras_sigmas: bool,
    /// RePaint's steps.
    #[arg(long, default_value_t = 50)]
    repaint_steps: usize,
    /// RePaint's jump length.
    #[arg(long, default_value_t = 10)]
    jump_length: usize,
    /// RePaint's resamplings per jump point.
    #[arg(long, default_value_t = 5)]
    jump_n_sample: usize,
    /// RePaint's η (1: DDPM's posterior, as the paper).
    #[arg(long, default_value_t = 1.0)]
    repaint_eta: f64,
    /// Sketch cell size in pixels (4: a 7 × 7 drawing of a 28 × 28 digit).
    #[arg(long, default_value_t = 4)]
    block: usize,
    /// Seed of the first batch.
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    /// Images per model call.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Output directory (edit.json, edit.md).
    #[arg(long, default_value = "runs/eval-edit")]
    out: PathBuf,
}

/// `trainer eval-edit`: SDEdit from sketches and RePaint of lower halves of held-out digits,
/// without a class, read by the evaluation classifier.
pub fn cmd_eval_edit(a: EvalEditArgs) -> Result<()> {
    let device = burn::tensor::Device::flex();
    let (model, config) = load_model(&a.weights, &device)?;
    let (classifier, _) = load_classifier(&a.classifier, &device)
        .with_context(|| format!("loading the classifier {}", a.classifier.display()))?;
    let test = datasets::mnist10k::load(Split::Test)?;
    let settings = eval::editing::EditSettings {
        n: a.n,
        strengths: a.strengths.clone(),
        sampler: diffusion::sampler::SamplerSettings {
            sampler: diffusion::sampler::SamplerKind::from_name(&a.sampler)?,
            num_inference_steps: a.steps,
            use_karras_sigmas: a.karras_sigmas,
            ..Default::default()
        },
        repaint_steps: a.repaint_steps,
        jump_length: a.jump_length,
        jump_n_sample: a.jump_n_sample,
        repaint_eta: a.repaint_eta,
        block: a.block,
        seed: a.seed,
        batch: a.batch,
    };
    let pb = bar(a.strengths.len() as u64 + 1);
    let report = eval::editing::evaluate_editing(
        &model,
        &config,
        &classifier,
        &test,
        &settings,
        &device,
        |done, _| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let md = eval::editing::edit_markdown(&report);
    artifacts::write_atomic(
        &a.out.join("edit.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    artifacts::write_atomic(&a.out.join("edit.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
