//! Editing quality, measured (issue 33): SDEdit from crude sketches of held-out digits, sampled
//! **without a class**, and RePaint of their lower halves, both read by the evaluation
//! classifier. A sketch is the digit cut into `block` × `block` cells, each cell's mean
//! thresholded at mid-grey: blocky strokes, no texture, no anti-aliasing — a drawing at the
//! model's resolution, not a training image.

use burn::tensor::{Device, Tensor, TensorData};
use datasets::Dataset;
use diffusion::sampler::{to_host, AnyScheduler, RePaintSchedulerConfig, SamplerSettings};
use diffusion::{ModelConfig, SampleRequest, Sampling, UNet};
use serde::{Deserialize, Serialize};

use crate::classifier::{predict, Classifier};
use crate::error::{EvalError, Result};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditSettings {
    /// Held-out digits used (the first `n` of the split).
    pub n: usize,
    /// SDEdit strengths.
    pub strengths: Vec<f64>,
    /// SDEdit's sampler.
    pub sampler: SamplerSettings,
    /// RePaint's steps, jump length and resamplings.
    pub repaint_steps: usize,
    /// RePaint's jump length.
    pub jump_length: usize,
    /// RePaint's resamplings per jump point.
    pub jump_n_sample: usize,
    /// RePaint's η (1: DDPM's posterior, as the paper).
    pub repaint_eta: f64,
    /// Sketch cell size, pixels.
    pub block: usize,
    /// Seed of the first batch (batch k uses seed + k).
    pub seed: u64,
    /// Images per model call.
    pub batch: usize,
}

/// One measured setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRow {
    /// `originals`, `sketches`, `sdedit` or `inpaint`.
    pub mode: String,
    /// SDEdit's strength.
    pub strength: Option<f64>,
    /// Fraction read by the classifier as the digit sketched / half-erased.
    pub read_as_digit: f64,
    /// Inpainting: whether every kept pixel came back exactly (after 8-bit quantisation).
    pub known_region_exact: Option<bool>,
    /// Wall time of the setting, seconds.
    pub seconds: f64,
}

/// The measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditReport {
    /// The settings.
    pub settings: EditSettings,
    /// The dataset split the digits came from.
    pub dataset: String,
    /// One row per setting.
    pub rows: Vec<EditRow>,
}

/// A crude sketch of `image` (values in [-1, 1], `side` × `side`, one channel): each `block` ×
/// `block` cell becomes white if a fifth of it or more is ink (mean above −0.6), else black.
pub fn sketch(image: &[f32], side: usize, block: usize) -> Vec<f32> {
    let mut out = vec![-1.0; side * side];
    for by in (0..side).step_by(block) {
        for bx in (0..side).step_by(block) {
            let cells: Vec<(usize, usize)> = (by..(by + block).min(side))
                .flat_map(|y| (bx..(bx + block).min(side)).map(move |x| (y, x)))
                .collect();
            let mean =
                cells.iter().map(|&(y, x)| image[y * side + x]).sum::<f32>() / cells.len() as f32;
            let v = if mean > -0.6 { 1.0 } else { -1.0 };
            for (y, x) in cells {
                out[y * side + x] = v;
            }
        }
    }
    out
}

fn accuracy(
    classifier: &Classifier,
    images: &[f32],
    labels: &[usize],
    shape: [usize; 4],
    device: &Device,
) -> f64 {
    let (probs, _) = predict(classifier, images, shape, 64, device);
    let k = probs.len() / labels.len();
    let right = labels
        .iter()
        .enumerate()
        .filter(|(i, &l)| {
            let row = &probs[i * k..(i + 1) * k];
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == l
        })
        .count();
    right as f64 / labels.len() as f64
}

/// Runs every setting over the first `settings.n` digits of `test`; `progress(done, total)`
/// after each batch.
pub fn evaluate_editing(
    model: &UNet,
    config: &ModelConfig,
    classifier: &Classifier,
    test: &Dataset,
    settings: &EditSettings,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<EditReport> {
    let [c, h, w] = test.image_shape();
    if c != 1 || h != w || config.unet.image_shape() != [c, h, w] {
        return Err(EvalError::Invalid(format!(
            "editing is measured on grey square digits of the model's size; {} has {:?}",
            test.name,
            test.image_shape()
        )));
    }
    let n = settings.n.min(test.len());
    if n == 0 || settings.batch == 0 || settings.block == 0 {
        return Err(EvalError::Invalid(
            "n, batch and block must be at least 1".into(),
        ));
    }
    let per = h * w;
    let labels: Vec<usize> = test.labels[..n].to_vec();
    let originals: Vec<f32> = (0..n).flat_map(|i| test.image_f32(i)).collect();
    let sketches: Vec<f32> = (0..n)
        .flat_map(|i| sketch(&originals[i * per..(i + 1) * per], h, settings.block))
        .collect();
    let shape = |m: usize| [m, 1, h, w];
    let mut rows = Vec::new();
    for (mode, images) in [("originals", &originals), ("sketches", &sketches)] {
        rows.push(EditRow {
            mode: mode.into(),
            strength: None,
            read_as_digit: accuracy(classifier, images, &labels, shape(n), device),
            known_region_exact: None,
            seconds: 0.0,
        });
    }
    let total = settings.strengths.len() + 1;
    let tensor =
        |v: &[f32], m: usize| Tensor::<4>::from_data(TensorData::new(v.to_vec(), shape(m)), device);
    let batches: Vec<(usize, usize)> = (0..n)
        .step_by(settings.batch)
        .map(|s| (s, settings.batch.min(n - s)))
        .collect();
    let request = |k: usize, m: usize| SampleRequest {
        image_shape: [1, h, w],
        class_labels: vec![None; m],
        guidance_scale: 1.0,
        seed: settings.seed + k as u64,
    };
    let scheduler = config.scheduler(&settings.sampler)?;
    for (done, &strength) in settings.strengths.iter().enumerate() {
        let started = std::time::Instant::now();
        let mut out = Vec::with_capacity(n * per);
        for (k, &(s, m)) in batches.iter().enumerate() {
            let x = Sampling::new(model, &scheduler, &request(k, m), device)?
                .with_init_image(tensor(&sketches[s * per..(s + m) * per], m), strength)?
                .run(|_| {});
            out.extend(to_host(x));
        }
        rows.push(EditRow {
            mode: "sdedit".into(),
            strength: Some(strength),
            read_as_digit: accuracy(classifier, &out, &labels, shape(n), device),
            known_region_exact: None,
            seconds: started.elapsed().as_secs_f64(),
        });
        progress(done + 1, total);
    }
    // Inpainting: keep the upper half, regenerate the lower half.
    let clip = config.clip_range();
    let repaint = AnyScheduler::RePaint(
        RePaintSchedulerConfig {
            num_inference_steps: settings.repaint_steps,
            jump_length: settings.jump_length,
            jump_n_sample: settings.jump_n_sample,
            eta: settings.repaint_eta,
            clip_sample: clip.is_some(),
            clip_sample_range: clip.unwrap_or(1.0),
        }
        .init(&config.schedule.build()?, config.prediction_type)?,
    );
    let keep_one: Vec<f32> = (0..per)
        .map(|i| if i < per / 2 { 1.0 } else { 0.0 })
        .collect();
    let started = std::time::Instant::now();
    let mut out = Vec::with_capacity(n * per);
    for (k, &(s, m)) in batches.iter().enumerate() {
        let x = Sampling::new(model, &repaint, &request(k, m), device)?
            .with_inpainting(
                tensor(&originals[s * per..(s + m) * per], m),
                tensor(&keep_one.repeat(m), m),
            )?
            .run(|_| {});
        out.extend(to_host(x));
    }
    let px = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as i32;
    let exact =
        (0..n).all(|i| (0..per / 2).all(|j| px(out[i * per + j]) == px(originals[i * per + j])));
    rows.push(EditRow {
        mode: "inpaint".into(),
        strength: None,
        read_as_digit: accuracy(classifier, &out, &labels, shape(n), device),
        known_region_exact: Some(exact),
        seconds: started.elapsed().as_secs_f64(),
    });
    progress(total, total);
    Ok(EditReport {
        settings: settings.clone(),
        dataset: test.name.clone(),
        rows,
    })
}

/// The report as a Markdown table.
pub fn edit_markdown(r: &EditReport) -> String {
    let mut s = format!(
        "Editing on the first {} digits of {} (no class; classifier reading):\n\n| mode | strength | read as the digit | known region exact | seconds |\n|---|---:|---:|---|---:|\n",
        r.settings.n, r.dataset
    );
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {:.1} % | {} | {:.0} |\n",
            row.mode,
            row.strength.map_or("—".into(), |v| format!("{v}")),
            100.0 * row.read_as_digit,
            row.known_region_exact
                .map_or("—", |b| if b { "yes" } else { "no" }),
            row.seconds
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketches_are_blocky_and_binary() {
        let side = 4;
        // Cell means: top-left −0.725 (a quarter faint ink), top-right 0.875, bottom-left
        // −0.25, bottom-right −0.975.
        let image = [
            -1.0, -1.0, 0.9, 0.8, -1.0, 0.1, 0.9, 0.9, -1.0, -1.0, -1.0, -1.0, 0.5, 0.5, -0.9, -1.0,
        ];
        let s = sketch(&image, side, 2);
        assert_eq!(
            s,
            vec![
                -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0,
                -1.0
            ]
        );
    }
}
