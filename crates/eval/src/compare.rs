//! Quality per model call: several `eval` reports of one model — the same data, n, seed and
//! guidance, different samplers or step counts — side by side, as a table and as plots of FID
//! against the number of model calls.
//!
//! A model call is one U-Net evaluation per image (one per step for every sampler here; under
//! guidance it is a batch of 2B, conditional and unconditional, costing the same for every
//! sampler), so it is what sampling time is proportional to.

use std::path::{Path, PathBuf};

use artifacts::write_atomic;
use serde::{Deserialize, Serialize};
use training::plot::{line_plot, Series};

use crate::error::{EvalError, Result};
use crate::evaluate::{fmt, EvalReport, Scores};

/// One sampler setting's scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompareRow {
    /// The sampler's name (`ddim`, `dpmsolver++`, `dpmsolver++ karras`, …).
    pub sampler: String,
    /// Denoising steps = model calls per image.
    pub model_calls: usize,
    /// DDIM's η.
    pub eta: f64,
    /// The scores at the (one) guidance scale.
    pub scores: Scores,
    /// Seconds spent sampling the n images.
    pub sample_s: f64,
    /// The report this row comes from.
    pub report: String,
}

/// The comparison (`compare.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    /// The model's weights file.
    pub model: String,
    /// The dataset spec.
    pub dataset: String,
    /// Samples per setting.
    pub n: usize,
    /// Sampling seed (the same for every setting).
    pub seed: u64,
    /// Guidance scale.
    pub guidance: f64,
    /// Real test vs real train images: the floor any sampler can reach at this n.
    pub baseline: Scores,
    /// One row per report, sorted by sampler, then model calls.
    pub rows: Vec<CompareRow>,
}

/// Reads an `eval.json` written by [`crate::evaluate::write_report`].
pub fn read_report(path: &Path) -> Result<EvalReport> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| EvalError::file(path, format!("not an eval report: {e}")))
}

/// Puts `reports` (with the files they came from) side by side. They must share the model,
/// dataset, n, seed and a single guidance scale, or the comparison would not be fair; a
/// report that differs is a one-line error naming the file and the field.
pub fn compare(reports: &[(PathBuf, EvalReport)]) -> Result<Comparison> {
    let Some((first_path, first)) = reports.first() else {
        return Err(EvalError::Invalid("no reports to compare".into()));
    };
    let guidance_of = |path: &Path, r: &EvalReport| match r.rows.as_slice() {
        [row] => Ok(row.guidance),
        rows => Err(EvalError::file(
            path,
            format!(
                "has {} guidance scales; compare needs one per report",
                rows.len()
            ),
        )),
    };
    let guidance = guidance_of(first_path, first)?;
    let mut rows = Vec::new();
    for (path, r) in reports {
        let differs = |field: &str, a: String, b: String| {
            EvalError::file(
                path,
                format!(
                    "{field} is {b}, but {} has {a}: compare reports of one setting",
                    first_path.display()
                ),
            )
        };
        if r.model != first.model {
            return Err(differs("model", first.model.clone(), r.model.clone()));
        }
        if r.dataset != first.dataset {
            return Err(differs("dataset", first.dataset.clone(), r.dataset.clone()));
        }
        if r.n != first.n {
            return Err(differs("n", first.n.to_string(), r.n.to_string()));
        }
        if r.seed != first.seed {
            return Err(differs("seed", first.seed.to_string(), r.seed.to_string()));
        }
        let w = guidance_of(path, r)?;
        if w != guidance {
            return Err(differs("guidance", guidance.to_string(), w.to_string()));
        }
        let row = &r.rows[0];
        let karras = if r.sampler.use_karras_sigmas {
            " karras"
        } else {
            ""
        };
        rows.push(CompareRow {
            sampler: format!("{}{karras}", r.sampler.sampler.name()),
            model_calls: r.sampler.num_inference_steps,
            eta: r.sampler.eta,
            scores: row.scores.clone(),
            sample_s: row.sample_s,
            report: path.display().to_string(),
        });
    }
    rows.sort_by(|a, b| {
        (a.sampler.as_str(), a.model_calls).cmp(&(b.sampler.as_str(), b.model_calls))
    });
    Ok(Comparison {
        model: first.model.clone(),
        dataset: first.dataset.clone(),
        n: first.n,
        seed: first.seed,
        guidance,
        baseline: first.baseline.clone(),
        rows,
    })
}

/// The comparison as Markdown.
pub fn compare_markdown(c: &Comparison) -> String {
    let mut s = format!(
        "# Quality per model call: `{}`\n\n- dataset `{}`; n = {} samples per setting, seed {}, guidance w = {}, classes balanced\n\
         - model calls = denoising steps (one U-Net evaluation of a batch of 2B, conditional + unconditional, per step)\n\n\
         | sampler | model calls | Inception FID | domain FID | classifier accuracy | sampling s |\n|---|---|---|---|---|---|\n",
        c.model, c.dataset, c.n, c.seed, c.guidance
    );
    for r in &c.rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} |\n",
            r.sampler,
            r.model_calls,
            fmt(r.scores.inception_fid, 2),
            fmt(r.scores.domain_fid, 3),
            fmt(r.scores.classifier_accuracy.map(|a| a * 100.0), 2),
            r.sample_s
        ));
    }
    let b = &c.baseline;
    s.push_str(&format!(
        "| real test vs train | | {} | {} | {} | |\n\nAccuracy in %. Domain FID uses the evaluation classifier's features, not Inception's.\n",
        fmt(b.inception_fid, 2),
        fmt(b.domain_fid, 3),
        fmt(b.classifier_accuracy.map(|a| a * 100.0), 2)
    ));
    s
}

/// Picks one score of a row.
type Pick = fn(&Scores) -> Option<f64>;

/// Writes `compare.json`, `compare.md` and the plots `fid-vs-model-calls.png` (Inception
/// FID) and `domain-fid-vs-model-calls.png` into `out`. Returns the files written.
pub fn write_comparison(c: &Comparison, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let mut files = Vec::new();
    let json = out.join("compare.json");
    write_atomic(
        &json,
        serde_json::to_string_pretty(c)
            .expect("serialises")
            .as_bytes(),
    )?;
    files.push(json);
    let md = out.join("compare.md");
    write_atomic(&md, compare_markdown(c).as_bytes())?;
    files.push(md);
    let plots: [(&str, &str, Pick); 2] = [
        ("fid-vs-model-calls.png", "Inception FID", |s| {
            s.inception_fid
        }),
        ("domain-fid-vs-model-calls.png", "domain FID", |s| {
            s.domain_fid
        }),
    ];
    for (file, what, pick) in plots {
        let mut series: Vec<Series> = Vec::new();
        for r in &c.rows {
            let Some(y) = pick(&r.scores) else { continue };
            let point = (r.model_calls as f64, y);
            match series.iter_mut().find(|s| s.name == r.sampler) {
                Some(s) => s.points.push(point),
                None => series.push(Series {
                    name: r.sampler.clone(),
                    points: vec![point],
                }),
            }
        }
        if series.is_empty() {
            continue;
        }
        let p = out.join(file);
        line_plot(
            &p,
            &format!(
                "{what} vs model calls ({}, n = {}, w = {})",
                c.dataset, c.n, c.guidance
            ),
            "model calls (denoising steps)",
            what,
            &series,
            false,
        )?;
        files.push(p);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::EvalRow;
    use diffusion::sampler::{SamplerKind, SamplerSettings};

    fn report(sampler: SamplerKind, steps: usize, fid: f64) -> EvalReport {
        EvalReport {
            model: "m.safetensors".into(),
            dataset: "mnist10k".into(),
            n: 100,
            n_reference: 100,
            n_baseline: 100,
            sampler: SamplerSettings {
                sampler,
                num_inference_steps: steps,
                eta: 0.0,
                use_karras_sigmas: false,
            },
            seed: 0,
            seeds: Vec::new(),
            classifier: None,
            classifier_test_accuracy: None,
            inception: true,
            baseline: Scores::default(),
            rows: vec![EvalRow {
                guidance: 3.0,
                seed: None,
                scores: Scores {
                    inception_fid: Some(fid),
                    ..Default::default()
                },
                sample_s: steps as f64,
                inception_s: 1.0,
            }],
            summary: Vec::new(),
            total_s: 1.0,
        }
    }

    #[test]
    fn rows_are_grouped_and_mismatches_are_errors() {
        let reports = vec![
            ("a".into(), report(SamplerKind::Ddim, 50, 10.0)),
            ("b".into(), report(SamplerKind::DpmSolverPlusPlus, 15, 10.5)),
            ("c".into(), report(SamplerKind::DpmSolverPlusPlus, 8, 14.0)),
        ];
        let c = compare(&reports).unwrap();
        let order: Vec<(&str, usize)> = c
            .rows
            .iter()
            .map(|r| (r.sampler.as_str(), r.model_calls))
            .collect();
        assert_eq!(
            order,
            [("ddim", 50), ("dpmsolver++", 8), ("dpmsolver++", 15)]
        );
        let md = compare_markdown(&c);
        assert!(md.contains("| dpmsolver++ | 15 | 10.50 |"), "{md}");

        let mut other_n = report(SamplerKind::Ddim, 10, 20.0);
        other_n.n = 200;
        let e = compare(&[reports[0].clone(), ("d".into(), other_n)]).unwrap_err();
        assert!(
            e.to_string().starts_with("d: n is 200, but a has 100"),
            "{e}"
        );
        let mut sweep = report(SamplerKind::Ddim, 10, 20.0);
        sweep.rows.push(sweep.rows[0].clone());
        assert!(compare(&[("s".into(), sweep)]).is_err());
        assert!(compare(&[]).is_err());
    }
}
