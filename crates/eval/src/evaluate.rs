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
//! seed `mix_seed(seed, 20, j)`, the same for every guidance scale. Several seeds give one row
//! per guidance scale and seed, and a summary of each scale as mean ± standard deviation over
//! the seeds, so a difference between two models can be told from the noise of sampling.
//!
//! The work is done in chunks ([`crate::chunks`]): every sampling batch (its 8-bit samples and
//! their Inception features) and every 500 real images' features are saved as they finish, so
//! a stopped run resumes where it stopped and gives the same report.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use artifacts::pixels::{from_u8, to_u8};
use artifacts::{grid, save_npy, save_png, write_atomic};
use burn::tensor::Device;
use datasets::loader::mix_seed;
use datasets::{Dataset, DatasetSpec, Split};
use diffusion::sampler::SamplerSettings;
use diffusion::{ModelConfig, UNet};
use serde::{Deserialize, Serialize};
use training::generate::generate;
use training::plot::{line_plot, Series};

use crate::chunks::{chunked, key, Chunk, ChunkStore};
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
    /// Sampling seeds: one row per guidance scale and seed (at least one).
    pub seeds: Vec<u64>,
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
    /// Where finished sample chunks are kept, so a stopped run resumes (`None`: kept nowhere).
    pub chunks: Option<ChunkStore>,
    /// What identifies the model's weights in a chunk's key (the weights file's SHA-256).
    pub model_id: String,
    /// Set (by a signal handler) to stop after the chunk in progress, with
    /// [`EvalError::Stopped`].
    pub stop: Option<Arc<AtomicBool>>,
}

/// Images of real data per chunk of Inception features.
const REAL_CHUNK: usize = 500;

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
    /// The sampling seed of this row (absent in reports of one seed written before seeds
    /// became a list: the report's `seed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The scores.
    pub scores: Scores,
    /// Seconds spent sampling.
    pub sample_s: f64,
    /// Seconds spent on Inception features (0 if skipped).
    pub inception_s: f64,
}

/// One guidance scale over several seeds: each score's mean and sample standard deviation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    /// Guidance scale w.
    pub guidance: f64,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// The mean of each score over the seeds.
    pub mean: Scores,
    /// The standard deviation (n − 1) of each score over the seeds.
    pub std: Scores,
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
    /// Sampling seed (the first of `seeds`).
    pub seed: u64,
    /// Every sampling seed (absent in reports written before seeds became a list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// The classifier file and its test accuracy, if used.
    pub classifier: Option<String>,
    /// Its accuracy on the real test split.
    pub classifier_test_accuracy: Option<f64>,
    /// Whether Inception FIDs were computed.
    pub inception: bool,
    /// Real test images vs real train images, at `n_baseline` each.
    pub baseline: Scores,
    /// One row per guidance scale and seed.
    pub rows: Vec<EvalRow>,
    /// With several seeds: one row per guidance scale, mean ± std over the seeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub summary: Vec<SummaryRow>,
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
    if settings.n < 2
        || settings.batch == 0
        || settings.guidance.is_empty()
        || settings.seeds.is_empty()
    {
        return Err(EvalError::Invalid(
            "eval needs n ≥ 2, batch ≥ 1, at least one guidance scale and at least one seed".into(),
        ));
    }
    let stop_check = |done: &str| -> Result<()> {
        if settings
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
        {
            return Err(EvalError::Stopped(format!(
                "stopped after {done}; what is done is kept: run the same command again to resume"
            )));
        }
        Ok(())
    };
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
        // Features in chunks of REAL_CHUNK images, each kept until the statistics are saved.
        let store = ChunkStore::new(cache.join("chunks"));
        let stage = format!("Inception features of {}", ds.name);
        let [c, h, w] = ds.image_shape();
        let per = c * h * w;
        let key_of = |a: usize, len: usize| {
            key(&[
                "real",
                &settings.dataset,
                split.name(),
                &a.to_string(),
                &len.to_string(),
            ])
        };
        let parts = chunked(
            Some(&store),
            ds.len(),
            REAL_CHUNK,
            key_of,
            |ch, len| ch.features.len() == len * FEATURE_DIM,
            |a, len, _| {
                let images = unit(&ds.pixels[a * per..(a + len) * per]);
                let features =
                    net.features(&images, [len, c, h, w], settings.inception_batch, |_| {})?;
                Ok(Chunk {
                    pixels: Vec::new(),
                    features,
                })
            },
            |done| progress(&stage, done, ds.len()),
            |done| stop_check(&format!("{done} of {} images of {}", ds.len(), ds.name)),
        )?;
        let f: Vec<f32> = parts.into_iter().flat_map(|p| p.features).collect();
        let s = FeatureStats::from_features(&f, FEATURE_DIM)?;
        s.save(&file)?;
        for a in (0..ds.len()).step_by(REAL_CHUNK) {
            store.remove(&key_of(a, REAL_CHUNK.min(ds.len() - a)));
        }
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

    // Samples, chunk by chunk: each sampling batch with its Inception features.
    let labels: Vec<Option<usize>> = (0..settings.n)
        .map(|i| u.num_classes.map(|k| i % k))
        .collect();
    let per = shape.iter().product::<usize>();
    let config_json = config.to_json();
    let sampler_json = serde_json::to_string(&settings.sampler).expect("serialises");
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    for &w in &settings.guidance {
        for &seed in &settings.seeds {
            let stage = if settings.seeds.len() > 1 {
                format!("sampling at w = {w}, seed {seed}")
            } else {
                format!("sampling at w = {w}")
            };
            let key_of = |a: usize, len: usize| {
                key(&[
                    "samples",
                    &settings.model_id,
                    &config_json,
                    &sampler_json,
                    &format!("{w:?}"),
                    &seed.to_string(),
                    &settings.batch.to_string(),
                    &a.to_string(),
                    &len.to_string(),
                ])
            };
            let has_features = |ch: &Chunk, len: usize| ch.features.len() == len * FEATURE_DIM;
            let (mut sample_s, mut inception_s) = (0.0, 0.0);
            let chunks = chunked(
                settings.chunks.as_ref(),
                settings.n,
                settings.batch,
                key_of,
                |ch, len| {
                    ch.pixels.len() == len * per
                        && (settings.inception.is_none() || has_features(ch, len))
                },
                // A kept chunk with its samples but without the features this run needs (an
                // earlier run without Inception) only gets its features.
                |a, len, kept| {
                    let mut chunk = match kept.filter(|ch| ch.pixels.len() == len * per) {
                        Some(ch) => ch,
                        None => {
                            let t0 = Instant::now();
                            let (v, _) = generate(
                                model,
                                config,
                                &settings.sampler,
                                labels[a..a + len].to_vec(),
                                w,
                                mix_seed(seed, 20, (a / settings.batch) as u64),
                                device,
                                |_| {},
                            )?;
                            sample_s += t0.elapsed().as_secs_f64();
                            // Quantised as a saved PNG would be.
                            Chunk {
                                pixels: v.iter().map(|&x| to_u8(x)).collect(),
                                features: Vec::new(),
                            }
                        }
                    };
                    if let Some(net) = settings.inception.as_ref() {
                        if !has_features(&chunk, len) {
                            let t1 = Instant::now();
                            chunk.features = net.features(
                                &unit(&chunk.pixels),
                                [len, shape[0], shape[1], shape[2]],
                                settings.inception_batch,
                                |_| {},
                            )?;
                            inception_s += t1.elapsed().as_secs_f64();
                        }
                    }
                    Ok(chunk)
                },
                |done| progress(&stage, done, settings.n),
                |done| {
                    stop_check(&format!(
                        "{done} of {} samples at w = {w}, seed {seed}",
                        settings.n
                    ))
                },
            )?;
            let pixels: Vec<u8> = chunks
                .iter()
                .flat_map(|c| c.pixels.iter().copied())
                .collect();
            let mut scores = Scores::default();
            if let Some(r) = &ref_inception {
                let f: Vec<f32> = chunks
                    .iter()
                    .flat_map(|c| c.features.iter().copied())
                    .collect();
                scores.inception_fid = Some(r.fid(&FeatureStats::from_features(&f, FEATURE_DIM)?)?);
            }
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
                seed: Some(seed),
                scores,
                sample_s,
                inception_s,
            });
            if seed == settings.seeds[0] {
                let values: Vec<f32> = pixels.iter().map(|&p| from_u8(p)).collect();
                let [c, h, wd] = shape;
                samples.push((w, values, [settings.n, c, h, wd]));
            }
        }
    }
    let summary = if settings.seeds.len() > 1 {
        settings
            .guidance
            .iter()
            .map(|&w| {
                let of_w: Vec<&Scores> = rows
                    .iter()
                    .filter(|r| r.guidance == w)
                    .map(|r| &r.scores)
                    .collect();
                let (mean, std) = mean_std(&of_w);
                SummaryRow {
                    guidance: w,
                    seeds: settings.seeds.clone(),
                    mean,
                    std,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let report = EvalReport {
        model: model_name.to_string(),
        dataset: settings.dataset.clone(),
        n: settings.n,
        n_reference,
        n_baseline,
        sampler: settings.sampler,
        seed: settings.seeds[0],
        seeds: if settings.seeds.len() > 1 {
            settings.seeds.clone()
        } else {
            Vec::new()
        },
        classifier: settings
            .classifier
            .as_ref()
            .map(|(_, i)| format!("trained on {}", i.dataset)),
        classifier_test_accuracy: settings.classifier.as_ref().map(|(_, i)| i.test_accuracy),
        inception: settings.inception.is_some(),
        baseline,
        rows,
        summary,
        total_s: started.elapsed().as_secs_f64(),
    };
    Ok((report, samples))
}

/// Each score's mean and sample standard deviation (n − 1) over `rows` (a score missing in
/// any row is missing).
fn mean_std(rows: &[&Scores]) -> (Scores, Scores) {
    let stat = |get: &dyn Fn(&Scores) -> Option<f64>| -> (Option<f64>, Option<f64>) {
        let v: Option<Vec<f64>> = rows.iter().map(|s| get(s)).collect();
        let Some(v) = v.filter(|v| !v.is_empty()) else {
            return (None, None);
        };
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        (Some(m), Some(var.sqrt()))
    };
    let (mut mean, mut std) = (Scores::default(), Scores::default());
    (mean.inception_fid, std.inception_fid) = stat(&|s| s.inception_fid);
    (mean.domain_fid, std.domain_fid) = stat(&|s| s.domain_fid);
    (mean.classifier_accuracy, std.classifier_accuracy) = stat(&|s| s.classifier_accuracy);
    (mean.classifier_score, std.classifier_score) = stat(&|s| s.classifier_score);
    (mean.classifier_score_std, std.classifier_score_std) = stat(&|s| s.classifier_score_std);
    (mean, std)
}

/// `v` with `digits` decimals, or a dash when absent (report tables).
pub(crate) fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown.
pub fn markdown(r: &EvalReport) -> String {
    let mut s = format!(
        "# Evaluation of `{}`\n\n- dataset: `{}`; reference: the first {} train images; baseline: {} test vs {} train images\n\
         - samples: n = {} per guidance scale and seed, {} with {} steps (η = {}), seed {}, classes balanced (sample i asks for class i mod K)\n\
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
        if r.seeds.len() > 1 {
            format!("s {:?}", r.seeds)
        } else {
            r.seed.to_string()
        },
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
        let seed = match row.seed {
            Some(seed) if r.seeds.len() > 1 => format!(", seed {seed}"),
            _ => String::new(),
        };
        s.push_str(&format!(
            "| samples, w = {}{seed} | {} | {} | {} | {} ± {} | {:.0} | {:.0} |\n",
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
    if !r.summary.is_empty() {
        s.push_str(&format!(
            "\nMean ± standard deviation over the {} seeds:\n\n| | Inception FID | domain FID | classifier accuracy | classifier score |\n|---|---|---|---|---|\n",
            r.seeds.len()
        ));
        for row in &r.summary {
            let (m, d) = (&row.mean, &row.std);
            s.push_str(&format!(
                "| samples, w = {} | {} ± {} | {} ± {} | {} ± {} | {} ± {} |\n",
                row.guidance,
                fmt(m.inception_fid, 2),
                fmt(d.inception_fid, 2),
                fmt(m.domain_fid, 3),
                fmt(d.domain_fid, 3),
                fmt(m.classifier_accuracy.map(|a| a * 100.0), 2),
                fmt(d.classifier_accuracy.map(|a| a * 100.0), 2),
                fmt(m.classifier_score, 3),
                fmt(d.classifier_score, 3),
            ));
        }
    }
    s.push_str("\nAccuracy in %. Domain FID and classifier score use the evaluation classifier, not Inception: compare them only between runs of this toolkit.\n");
    s
}

/// Writes `eval.json`, `eval.md`, a sample grid per guidance scale, with `npy` every sample of
/// the first seed (`samples-wW.npy`, float32 `[n, c, h, w]` in [-1, 1] as the 8-bit images
/// scored, for `scripts/backgrounds.py`) and, for a sweep, the FID-versus-accuracy plot
/// `guidance-sweep.png` into `out`. Returns the files written.
pub fn write_report(
    report: &EvalReport,
    samples: &[(f64, Vec<f32>, [usize; 4])],
    out: &Path,
    npy: bool,
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
        if npy {
            let p = out.join(format!("samples-w{w}.npy"));
            save_npy(&p, values, &[*n, *c, *h, *wd])?;
            files.push(p);
        }
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
