//! `trainer schedule`: a noise schedule's constants as CSV and a plot.

use std::path::PathBuf;

use crate::flags::ScheduleFlags;
use anyhow::Result;
use artifacts::{ensure_parent, write_atomic};
use clap::Args;
use training::plot::{line_plot, Series};

#[derive(Args)]
pub(crate) struct ScheduleArgs {
    #[command(flatten)]
    schedule: ScheduleFlags,
    /// Write the table as CSV (t, beta, alpha, alpha_cumprod, sqrt_alpha_cumprod,
    /// sqrt_one_minus_alpha_cumprod, snr).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Plot ᾱ_t of linear, cosine and sigmoid at this T (the chosen one first).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub(crate) fn cmd_schedule(a: ScheduleArgs) -> Result<()> {
    let name = a.schedule.schedule.clone();
    let s = a.schedule.config(&name)?.build()?;
    let csv = training::plot::schedule_csv(&s);
    match &a.csv {
        Some(p) => {
            ensure_parent(p)?;
            write_atomic(p, csv.as_bytes())?;
        }
        None if a.plot.is_none() => print!("{csv}"),
        None => {}
    }
    if let Some(p) = &a.plot {
        let mut names = vec![name.clone()];
        names.extend(
            ["linear", "cosine", "sigmoid"]
                .iter()
                .filter(|n| **n != name)
                .map(|n| n.to_string()),
        );
        let mut series = Vec::new();
        for other in names {
            let sc = a.schedule.config(&other)?.build()?;
            let last = *sc.alphas_cumprod.last().expect("T ≥ 1");
            series.push(Series {
                name: format!("{other} (ᾱ_T = {last:.2e})"),
                points: sc
                    .alphas_cumprod
                    .iter()
                    .enumerate()
                    .map(|(t, &v)| (t as f64, v))
                    .collect(),
            });
        }
        line_plot(p, "ᾱ_t = ∏ (1 − β_s)", "t", "ᾱ_t", &series, false)?;
    }
    eprintln!(
        "{} schedule, T = {}: ᾱ_T = {:.3e}, SNR_T = {:.3e}",
        name,
        a.schedule.timesteps,
        s.alphas_cumprod.last().copied().unwrap_or(f64::NAN),
        s.snr.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
