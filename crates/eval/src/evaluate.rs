//! `eval`: sample a model n times and score the samples against the real data.
//!
//! Metrics (named as what they are):
//! - **Inception FID**: pytorch-fid's network and input pipeline ([`crate::inception`]) on
//!   8-bit images (samples are quantised to u8 as a saved PNG would be), against the first
//!   min(n, train size) images of the dataset's train split. Statistics of real data are cached
//!   per dataset, split and n under the cache directory.
//! - **Domain FID**: the same Fréchet distance on the evaluation classifier's penultimate
//!   features (not comparable with published FIDs).
//! - **Classifier accuracy**: the fraction of samples asked for class k that the classifier
//!   assigns to k.
//! - **Classifier score**: exp E[KL(p(y|x) ‖ p(y))] with the domain classifier, 10 splits (the
//!   Inception-Score form; the pool3 weights carry no logits, so no standard IS).
//! - **Real-vs-real baseline**: the same FIDs between the first m test images and the first m
//!   train images, m = min(n, test size, train size). Small n biases FID upwards; this is the
//!   floor to read the model's numbers against.
//!
//! Sample i asks for class i mod K (a conditional model), so classes are balanced; batch j uses
//! seed `mix_seed(seed, 20, j)`, the same for every guidance scale.

use std::path::{Path, PathBuf};
use std::time::Instant;

use artifacts::pixels::to_u8;
use artifacts::{grid, save_png, write_atomic};
use burn::tensor::Device;
use datasets::loader::mix_seed;
use datasets::{Dataset, DatasetSpec, Split};
use diffusion::sampler::SamplerSettings;
use diffusion::{ModelConfig, UNet};
use serde::{Deserialize, Serialize};
use training::generate::generate;
use training::plot::{line_plot, Series};

use crate::classifier::{predict, Classifier, ClassifierInfo};
use crate::error::{EvalError, Result};
use crate::fid::{FeatureStats, FidReference};
use crate::inception::{cache_dir, FidInception, FEATURE_DIM};
use crate::scores::{accuracy, inception_score_form};

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// The real data (a dataset spec: `mnist10k`, `fashion-mnist[:DIR]`, …).
    pub dataset: String,
    /// Samples per guidance scale.
    pub n: usize,
    /// Samples per sampling batch.
    pub batch: usize,
    /// Sampler.
    pub sampler: SamplerSettings,
    /// Guidance scales (one, or a sweep).
    pub guidance: Vec<f64>,
    /// Sampling seed.
    pub seed: u64,
    /// The evaluation classifier and its info (skipped when `None`).
    pub classifier: Option<(Classifier, ClassifierInfo)>,
    /// The FID Inception (Inception FID skipped when `None`).
    pub inception: Option<FidInception>,
    /// Images per Inception batch.
    pub inception_batch: usize,
    /// Splits of the classifier score.
    pub splits: usize,
    /// Directory for cached real-data statistics (default: `<cache>/fid-stats`).
    pub stats_cache: Option<PathBuf>,
}

/// The scores of one set of images.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    /// Inception FID against the reference.
    pub inception_fid: Option<f64>,
    /// FID on the classifier's penultimate features.
    pub domain_fid: Option<f64>,
    /// Fraction classified as the asked class.
    pub classifier_accuracy: Option<f64>,
    /// Classifier score (mean over splits).
    pub classifier_score: Option<f64>,
    /// Its standard deviation over splits.
    pub classifier_score_std: Option<f64>,
}

/// One guidance scale's results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRow {
    /// Guidance scale w (ε̃ = ε_u + w (ε_c − ε_u); 1 = plain conditional).
    pub guidance: f64,
    /// The scores.
    pub scores: Scores,
    /// Seconds spent sampling.
    pub sample_s: f64,
    /// Seconds spent on Inception features (0 if skipped).
    pub inception_s: f64,
}

/// The whole report (`eval.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    /// The model's weights file.
    pub model: String,
    /// The dataset spec.
    pub dataset: String,
    /// Samples per guidance scale.
    pub n: usize,
    /// Reference (train) images in the FIDs.
    pub n_reference: usize,
    /// Images per side of the real-vs-real baseline.
    pub n_baseline: usize,
    /// Sampler settings.
    pub sampler: SamplerSettings,
    /// Sampling seed.
    pub seed: u64,
    /// The classifier file and its test accuracy, if used.
    pub classifier: Option<String>,
    /// Its accuracy on the real test split.
    pub classifier_test_accuracy: Option<f64>,
    /// Whether Inception FIDs were computed.
    pub inception: bool,
    /// Real test images vs real train images, at `n_baseline` each.
    pub baseline: Scores,
    /// One row per guidance scale.
    pub rows: Vec<EvalRow>,
    /// Wall time of the whole evaluation.
    pub total_s: f64,
}

/// Real images (u8) → values in [0, 1] for the Inception.
fn unit(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| p as f32 / 255.0).collect()
}

/// Real images (u8) → values in [-1, 1] for the classifier (as [`Dataset::image_f32`]).
fn signed(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect()
}

/// Cache file of the Inception statistics of the first `m` images of a split.
fn stats_file(dir: &Path, spec: &str, split: Split, m: usize) -> PathBuf {
    let key: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{key}-{}-{m}-inception.safetensors", split.name()))
}

/// Runs the evaluation of `model` (its weights file named `model_name`). `progress` gets
/// (stage, done, total).
pub fn evaluate(
    model: &UNet,
    config: &ModelConfig,
    model_name: &str,
    settings: &EvalSettings,
    device: &Device,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(EvalReport, Vec<(f64, Vec<f32>, [usize; 4])>)> {
    let started = Instant::now();
    if settings.n < 2 || settings.batch == 0 || settings.guidance.is_empty() {
        return Err(EvalError::Invalid(
            "eval needs n ≥ 2, batch ≥ 1 and at least one guidance scale".into(),
        ));
    }
    let spec = DatasetSpec::parse(
        &settings.dataset,
        config.unet.resolution,
        config.unet.in_channels,
    )?;
    // A classifier judges only the kind of data it was trained on: the shapes of MNIST and
    // Fashion-MNIST match, so a mix-up would otherwise pass silently.
    if let Some((_, info)) = &settings.classifier {
        let trained_on = DatasetSpec::parse(&info.dataset, 0, 0).map(|s| s.kind());
        if trained_on.is_ok_and(|k| k != spec.kind()) {
            return Err(EvalError::Invalid(format!(
                "the classifier was trained on {}, not on {}: use the classifier of {}",
                info.dataset,
                spec.kind(),
                spec.kind()
            )));
        }
    }
    let train = spec.load(Split::Train)?;
    let test = spec.load(Split::Test)?;
    let u = &config.unet;
    let shape = u.image_shape();
    if train.image_shape() != shape {
        return Err(EvalError::Invalid(format!(
            "the model makes {shape:?} images but {} has {:?}",
            train.name,
            train.image_shape()
        )));
    }
    if let Some((_, info)) = &settings.classifier {
        if [info.in_channels, info.resolution, info.resolution] != shape
            || u.num_classes.is_some_and(|k| k != info.num_classes)
        {
            return Err(EvalError::Invalid(format!(
                "the classifier (trained on {}) does not fit this model's images or classes",
                info.dataset
            )));
        }
    }
    let n_reference = settings.n.min(train.len());
    let n_baseline = settings.n.min(train.len()).min(test.len());
    let cache = settings
        .stats_cache
        .clone()
        .unwrap_or_else(|| cache_dir().join("fid-stats"));

    // Reference statistics: real train images.
    let real_train = train.take(n_reference);
    let real_baseline_train = train.take(n_baseline);
    let real_test = test.take(n_baseline);
    let inception_stats = |ds: &Dataset,
                           split: Split,
                           progress: &mut dyn FnMut(&str, usize, usize)|
     -> Result<Option<FeatureStats>> {
        let Some(net) = &settings.inception else {
            return Ok(None);
        };
        let file = stats_file(&cache, &settings.dataset, split, ds.len());
        if let Ok(s) = FeatureStats::load(&file) {
            if s.n == ds.len() && s.dim() == FEATURE_DIM {
                return Ok(Some(s));
            }
        }
        let stage = format!("Inception features of {}", ds.name);
        let [c, h, w] = ds.image_shape();
        let f = net.features(
            &unit(&ds.pixels),
            [ds.len(), c, h, w],
            settings.inception_batch,
            |d| progress(&stage, d, ds.len()),
        )?;
        let s = FeatureStats::from_features(&f, FEATURE_DIM)?;
        s.save(&file)?;
        Ok(Some(s))
    };
    let ref_inception =
        inception_stats(&real_train, Split::Train, progress)?.map(FidReference::new);
    let base_train_inception = if n_baseline == n_reference {
        ref_inception.clone()
    } else {
        inception_stats(&real_baseline_train, Split::Train, progress)?.map(FidReference::new)
    };
    let test_inception = inception_stats(&real_test, Split::Test, progress)?;

    // The classifier's view of the real data.
    let classify = |pixels: &[f32], n: usize| {
        settings
            .classifier
            .as_ref()
            .map(|(c, _)| predict(c, pixels, [n, shape[0], shape[1], shape[2]], 256, device))
    };
    let domain_stats =
        |feats: &[f32], info: &ClassifierInfo| FeatureStats::from_features(feats, info.feature_dim);
    let real_train_cls = classify(&signed(&real_train.pixels), real_train.len());
    let real_test_cls = classify(&signed(&real_test.pixels), n_baseline);
    // The baseline's train images are the first n_baseline of the reference images: reuse
    // their features instead of classifying them again.
    let (ref_domain, base_domain_ref) = match (&settings.classifier, &real_train_cls) {
        (Some((_, info)), Some((_, f))) => {
            let full = FidReference::new(domain_stats(f, info)?);
            let base = if n_baseline == n_reference {
                full.clone()
            } else {
                FidReference::new(domain_stats(&f[..n_baseline * info.feature_dim], info)?)
            };
            (Some(full), Some(base))
        }
        _ => (None, None),
    };

    // Real-vs-real baseline.
    let mut baseline = Scores::default();
    if let (Some(r), Some(t)) = (&base_train_inception, &test_inception) {
        baseline.inception_fid = Some(r.fid(t)?);
    }
    if let (Some((_, info)), Some(r), Some((probs, feats))) =
        (&settings.classifier, &base_domain_ref, &real_test_cls)
    {
        baseline.domain_fid = Some(r.fid(&domain_stats(feats, info)?)?);
        baseline.classifier_accuracy = Some(accuracy(probs, info.num_classes, &real_test.labels));
        let (m, s) = inception_score_form(probs, info.num_classes, settings.splits);
        (baseline.classifier_score, baseline.classifier_score_std) = (Some(m), Some(s));
    }

    // Samples.
    let labels: Vec<Option<usize>> = (0..settings.n)
        .map(|i| u.num_classes.map(|k| i % k))
        .collect();
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    for &w in &settings.guidance {
        let t0 = Instant::now();
        let stage = format!("sampling at w = {w}");
        let mut values = Vec::with_capacity(settings.n * shape.iter().product::<usize>());
        for (j, chunk) in labels.chunks(settings.batch).enumerate() {
            let (v, _) = generate(
                model,
                config,
                &settings.sampler,
                chunk.to_vec(),
                w,
                mix_seed(settings.seed, 20, j as u64),
                device,
                |_| {},
            )?;
            values.extend(v);
            progress(
                &stage,
                (j * settings.batch + chunk.len()).min(settings.n),
                settings.n,
            );
        }
        let sample_s = t0.elapsed().as_secs_f64();
        // Quantise as a saved PNG would.
        let pixels: Vec<u8> = values.iter().map(|&v| to_u8(v)).collect();
        let mut scores = Scores::default();
        let t1 = Instant::now();
        if let (Some(net), Some(r)) = (&settings.inception, &ref_inception) {
            let stage = format!("Inception features at w = {w}");
            let f = net.features(
                &unit(&pixels),
                [settings.n, shape[0], shape[1], shape[2]],
                settings.inception_batch,
                |d| progress(&stage, d, settings.n),
            )?;
            scores.inception_fid = Some(r.fid(&FeatureStats::from_features(&f, FEATURE_DIM)?)?);
        }
        let inception_s = if settings.inception.is_some() {
            t1.elapsed().as_secs_f64()
        } else {
            0.0
        };
        if let (Some((_, info)), Some(r), Some((probs, feats))) = (
            &settings.classifier,
            &ref_domain,
            classify(&signed(&pixels), settings.n),
        ) {
            scores.domain_fid = Some(r.fid(&domain_stats(&feats, info)?)?);
            if u.num_classes.is_some() {
                let wanted: Vec<usize> = labels.iter().map(|l| l.unwrap_or(0)).collect();
                scores.classifier_accuracy = Some(accuracy(&probs, info.num_classes, &wanted));
            }
            let (m, s) = inception_score_form(&probs, info.num_classes, settings.splits);
            (scores.classifier_score, scores.classifier_score_std) = (Some(m), Some(s));
        }
        rows.push(EvalRow {
            guidance: w,
            scores,
            sample_s,
            inception_s,
        });
        let [c, h, wd] = shape;
        samples.push((w, values, [settings.n, c, h, wd]));
    }
    let report = EvalReport {
        model: model_name.to_string(),
        dataset: settings.dataset.clone(),
        n: settings.n,
        n_reference,
        n_baseline,
        sampler: settings.sampler,
        seed: settings.seed,
        classifier: settings
            .classifier
            .as_ref()
            .map(|(_, i)| format!("trained on {}", i.dataset)),
        classifier_test_accuracy: settings.classifier.as_ref().map(|(_, i)| i.test_accuracy),
        inception: settings.inception.is_some(),
        baseline,
        rows,
        total_s: started.elapsed().as_secs_f64(),
    };
    Ok((report, samples))
}

/// `v` with `digits` decimals, or a dash when absent (report tables).
pub(crate) fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown.
pub fn markdown(r: &EvalReport) -> String {
    let mut s = format!(
        "# Evaluation of `{}`\n\n- dataset: `{}`; reference: the first {} train images; baseline: {} test vs {} train images\n\
         - samples: n = {} per guidance scale, {} with {} steps (η = {}), seed {}, classes balanced (sample i asks for class i mod K)\n\
         - Inception FID: pytorch-fid's FID Inception-v3 (pool3, 2048-d) on 8-bit images{}\n\
         - classifier: {}{}\n- total time: {:.0} s\n\n",
        r.model,
        r.dataset,
        r.n_reference,
        r.n_baseline,
        r.n_baseline,
        r.n,
        format!(
            "{}{}",
            r.sampler.sampler.name(),
            if r.sampler.use_karras_sigmas { " (Karras sigmas)" } else { "" }
        ),
        r.sampler.num_inference_steps,
        r.sampler.eta,
        r.seed,
        if r.inception { "" } else { " — skipped (no weights)" },
        r.classifier.as_deref().unwrap_or("none"),
        r.classifier_test_accuracy.map_or(String::new(), |a| format!(", test accuracy {:.2} %", a * 100.0)),
        r.total_s
    );
    s.push_str("| | Inception FID | domain FID | classifier accuracy | classifier score | sampling s | Inception s |\n|---|---|---|---|---|---|---|\n");
    let b = &r.baseline;
    s.push_str(&format!(
        "| real test vs train (n = {}) | {} | {} | {} | {} ± {} | | |\n",
        r.n_baseline,
        fmt(b.inception_fid, 2),
        fmt(b.domain_fid, 3),
        fmt(b.classifier_accuracy.map(|a| a * 100.0), 2),
        fmt(b.classifier_score, 3),
        fmt(b.classifier_score_std, 3)
    ));
    for row in &r.rows {
        let x = &row.scores;
        s.push_str(&format!(
            "| samples, w = {} | {} | {} | {} | {} ± {} | {:.0} | {:.0} |\n",
            row.guidance,
            fmt(x.inception_fid, 2),
            fmt(x.domain_fid, 3),
            fmt(x.classifier_accuracy.map(|a| a * 100.0), 2),
            fmt(x.classifier_score, 3),
            fmt(x.classifier_score_std, 3),
            row.sample_s,
            row.inception_s
        ));
    }
    s.push_str("\nAccuracy in %. Domain FID and classifier score use the evaluation classifier, not Inception: compare them only between runs of this toolkit.\n");
    s
}

/// Writes `eval.json`, `eval.md`, a sample grid per guidance scale and, for a sweep, the
/// FID-versus-accuracy plot `guidance-sweep.png` into `out`. Returns the files written.
pub fn write_report(
    report: &EvalReport,
    samples: &[(f64, Vec<f32>, [usize; 4])],
    out: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let mut files = Vec::new();
    let json = out.join("eval.json");
    write_atomic(
        &json,
        serde_json::to_string_pretty(report)
            .expect("serialises")
            .as_bytes(),
    )?;
    files.push(json);
    let md = out.join("eval.md");
    write_atomic(&md, markdown(report).as_bytes())?;
    files.push(md);
    for (w, values, [n, c, h, wd]) in samples {
        let m = (*n).min(100);
        let img = grid(&values[..m * c * h * wd], [m, *c, *h, *wd], 10, 2, 1);
        let p = out.join(format!("samples-w{w}.png"));
        save_png(&p, &img)?;
        files.push(p);
    }
    if report.rows.len() > 1 {
        let pick = |s: &Scores| s.inception_fid.or(s.domain_fid);
        let points: Vec<(f64, f64)> = report
            .rows
            .iter()
            .filter_map(|r| Some((r.scores.classifier_accuracy? * 100.0, pick(&r.scores)?)))
            .collect();
        if !points.is_empty() {
            let what = if report.inception {
                "Inception FID"
            } else {
                "domain FID"
            };
            let ws: Vec<String> = report.rows.iter().map(|r| r.guidance.to_string()).collect();
            let p = out.join("guidance-sweep.png");
            line_plot(
                &p,
                &format!(
                    "{what} vs classifier accuracy, guidance w = {}",
                    ws.join(", ")
                ),
                "classifier accuracy (%)",
                what,
                &[Series {
                    name: "guidance sweep".into(),
                    points,
                }],
                false,
            )?;
            files.push(p);
        }
    }
    Ok(files)
}
