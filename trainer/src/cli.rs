//! The command line: the subcommands, each with its arguments in its own `*_cmd.rs`.

use clap::{Parser, Subcommand};

/// Train DDPMs on your images and sample them with DDPM/DDIM and classifier-free guidance.
///
/// Quick start (CPU, bundled MNIST-10k):
///   trainer train --steps 300 --out runs/quick
///   trainer sample --weights runs/quick/ema.safetensors --class 3 --guidance 3 --out three.png
#[derive(Parser)]
#[command(version, about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Train a model; writes checkpoints, sample grids, metrics and the EMA weights to --out.
    Train(crate::train_cmd::TrainArgs),
    /// Sample a trained model into a PNG grid (and optionally raw .npy / a trajectory).
    Sample(crate::sample_cmd::SampleArgs),
    /// Print or plot a noise schedule (β, ᾱ, SNR, …) to check that ᾱ_T is near zero.
    Schedule(crate::schedule_cmd::ScheduleArgs),
    /// Show the forward (noising) process on one dataset image.
    Forward(crate::forward_cmd::ForwardArgs),
    /// Export a checkpoint's EMA weights as safetensors + config JSON, or a diffusers folder.
    Export(crate::export_cmd::ExportArgs),
    /// Import a diffusers UNet2DModel pipeline (or unet) folder as our weights + config.
    ImportDiffusers(crate::export_cmd::ImportArgs),
    /// Serve the HTTP sampling API and the browser page.
    Serve(crate::serve_cmd::ServeArgs),
    /// Train the small evaluation classifier (class accuracy, classifier score, domain FID).
    TrainClassifier(crate::eval_cmd::TrainClassifierArgs),
    /// Sample n images and report Inception FID, domain FID, classifier accuracy and score
    /// against the real data (and the real-vs-real baseline).
    Eval(crate::eval_cmd::EvalArgs),
    /// Put several `eval` reports (eval.json) of one model side by side: a table and plots of
    /// FID against model calls (e.g. DPM-Solver++ vs DDIM at several step counts).
    EvalCompare(crate::eval_cmd::EvalCompareArgs),
    /// Measure editing: SDEdit from sketches and RePaint of held-out digits, without a class.
    EvalEdit(crate::eval_cmd::EvalEditArgs),
    /// List the backends compiled into this build (cpu, wgpu, cuda) and the devices each sees.
    Devices(crate::devices_cmd::DevicesArgs),
}
