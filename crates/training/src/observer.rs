//! What a training run reports while it runs ([`StepMetrics`] to a [`TrainObserver`]) and when
//! it ends ([`TrainSummary`]).

use std::path::PathBuf;

use serde::Serialize;

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Zero-based step index.
    pub step: u64,
    /// Loss (NaN/inf when the step was skipped for it).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the step was skipped as non-finite.
    pub skipped: bool,
    /// Images per second over this step (data wait included).
    pub img_per_s: f64,
}

/// Receives progress while training (the CLI draws a progress bar from it).
pub trait TrainObserver {
    /// After every step.
    fn on_step(&mut self, _metrics: &StepMetrics) {}
    /// For occasional messages (checkpoint written, grid written, ...).
    fn on_message(&mut self, _message: &str) {}
    /// Asked after every window of steps: `Some(reason)` (e.g. `"SIGTERM"`) makes the run
    /// write a checkpoint and stop with [`crate::error::TrainError::Stopped`].
    fn stop_requested(&mut self) -> Option<String> {
        None
    }
}

/// An observer that ignores everything.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps completed.
    pub steps: u64,
    /// Loss of every step run in this invocation (in order, skipped steps included).
    pub losses: Vec<f64>,
    /// Steps skipped as non-finite (whole run).
    pub skipped_total: u64,
    /// Training time (whole run), seconds.
    pub elapsed_s: f64,
    /// The exported EMA weights.
    pub weights: PathBuf,
}
