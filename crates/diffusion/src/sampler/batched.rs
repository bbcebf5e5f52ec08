//! Several sampling runs, one model call per step: continuous (step-level) batching.
//!
//! Each run keeps its own scheduler, step count, step index, guidance scale, classes and noise
//! generator; only the model call is shared. Runs may be at different steps, even of different
//! samplers: the U-Net takes a timestep and a label per row. Because the model's forward is
//! batch-invariant (a row's output does not depend on the other rows, bit for bit:
//! `tests/batch_invariance.rs`), a run stepped together with others gives exactly the image it
//! gives alone.

use burn::tensor::Tensor;

use super::sampling::{Denoiser, SamplingState, StepOutput};
use super::Scheduler;
use crate::error::{Error, Result};

/// Runs one step of every unfinished run with a single model call of all their rows (in the
/// order given) and returns each run's [`StepOutput`] (`None` for a run already finished).
///
/// Every run must have been made for this model (`SamplingState::new` with its
/// `num_classes`).
pub fn step_together<M: Denoiser, S: Scheduler>(
    model: &M,
    runs: &mut [(&mut SamplingState, &S)],
) -> Result<Vec<Option<StepOutput>>> {
    let queries: Vec<_> = runs.iter().map(|(run, s)| run.query(*s)).collect();
    let asked: Vec<_> = queries.iter().flatten().collect();
    if asked.is_empty() {
        return Ok(runs.iter().map(|_| None).collect());
    }
    let conditional = asked[0].class_labels.is_some();
    if asked
        .iter()
        .any(|q| q.class_labels.is_some() != conditional)
    {
        return Err(Error::Sampler(
            "runs for a conditional and an unconditional model cannot share a model call".into(),
        ));
    }
    let x = Tensor::cat(asked.iter().map(|q| q.x.clone()).collect(), 0);
    let timesteps: Vec<f64> = asked
        .iter()
        .flat_map(|q| q.timesteps.iter().copied())
        .collect();
    let labels: Option<Vec<usize>> = conditional.then(|| {
        asked
            .iter()
            .flat_map(|q| q.class_labels.iter().flatten().copied())
            .collect()
    });
    let prediction = model.predict(x, &timesteps, labels.as_deref());
    let mut row = 0;
    Ok(runs
        .iter_mut()
        .zip(&queries)
        .map(|((run, scheduler), query)| {
            let rows = query.as_ref()?.timesteps.len();
            let own = prediction.clone().narrow(0, row, rows);
            row += rows;
            Some(run.advance(*scheduler, own))
        })
        .collect())
}
