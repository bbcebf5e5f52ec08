//! A run directory's records: `metrics.jsonl` (one JSON line per logged step; a resumed run
//! drops the lines after its checkpoint), `loss.png`, and where the exported weights go.

use std::path::{Path, PathBuf};

use artifacts::write_atomic;

use crate::error::Result;
use crate::plot::{line_plot, Series};

/// Where a run writes: `config.json`, `metrics.jsonl`, `loss.png`, `samples/`,
/// `checkpoints/`, and at the end `ema.safetensors` + `ema.json`.
pub fn exported_weights(run_dir: &Path) -> PathBuf {
    run_dir.join("ema.safetensors")
}

/// Loss history from `metrics.jsonl`, keeping only steps before `before` (a resumed run
/// rewrites the steps after its checkpoint); the file is truncated to match.
pub(crate) fn read_history(path: &Path, before: u64) -> Result<Vec<(u64, f64)>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut kept = String::new();
    let mut history = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(step), Some(loss)) = (v["step"].as_u64(), v["loss"].as_f64()) else {
            continue;
        };
        if step < before {
            history.push((step, loss));
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_atomic(path, kept.as_bytes())?;
    Ok(history)
}

/// Draws `loss.png`: the logged losses and their running mean.
pub(crate) fn plot_loss(run_dir: &Path, history: &[(u64, f64)]) -> Result<()> {
    let finite: Vec<(f64, f64)> = history
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    if finite.len() < 2 {
        return Ok(());
    }
    let k = (finite.len() / 20).max(1);
    let smooth: Vec<(f64, f64)> = (0..finite.len())
        .map(|i| {
            let lo = i.saturating_sub(k);
            let w = &finite[lo..=i];
            (
                finite[i].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    line_plot(
        &run_dir.join("loss.png"),
        "training loss",
        "step",
        "MSE loss",
        &[
            Series {
                name: "loss".into(),
                points: finite,
            },
            Series {
                name: format!("running mean ({k})"),
                points: smooth,
            },
        ],
        true,
    )
}
