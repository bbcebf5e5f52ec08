//! Several sampling runs, one model call per step: continuous (step-level) batching.
//!
//! Each run keeps its own scheduler, step count, step index, guidance scale, classes and noise
//! generator; only the model call is shared. Runs may be at different steps, even of different
//! samplers: the U-Net takes a timestep and a label per row. Because the model's forward is
//! batch-invariant (a row's output does not depend on the other rows, bit for bit:
//! `tests/batch_invariance.rs`), a run stepped together with others gives exactly the image it
//! gives alone.
//!
//! A run may also put only some of its rows in a call ([`step_in_parts`]): its step's model
//! call is then spread over several batched calls and the step is taken when the last part is
//! predicted. A server uses it so that a many-image request never holds a whole batch: the
//! requests beside it keep stepping every call. By the same batch invariance the pixels do not
//! change.

use burn::tensor::Tensor;

use super::sampling::{Denoiser, ModelQuery, SamplingState, StepOutput};
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
    let mut partials: Vec<Option<PartialStep>> = runs.iter().map(|_| None).collect();
    let mut shares: Vec<Share<'_, S>> = runs
        .iter_mut()
        .zip(&mut partials)
        .map(|((state, scheduler), partial)| Share {
            state: &mut **state,
            scheduler: *scheduler,
            partial,
            max_rows: usize::MAX,
        })
        .collect();
    step_in_parts(model, &mut shares)
}

/// A step whose model call is under way in parts: the query and the predictions of its first
/// `rows_done` rows. A clone is cheap (tensors are shared).
#[derive(Debug, Clone)]
pub struct PartialStep {
    query: ModelQuery,
    parts: Vec<Tensor<4>>,
    rows_done: usize,
}

impl PartialStep {
    /// Rows of the step's model call not predicted yet.
    pub fn rows_left(&self) -> usize {
        self.query.timesteps.len() - self.rows_done
    }
}

/// One run's place in a shared model call ([`step_in_parts`]).
pub struct Share<'a, S> {
    /// The run.
    pub state: &'a mut SamplingState,
    /// Its scheduler.
    pub scheduler: &'a S,
    /// Its step in progress, when an earlier call predicted only part of it (kept by the
    /// caller between calls; `None` otherwise).
    pub partial: &'a mut Option<PartialStep>,
    /// The most rows it may put in this call (0: none this time).
    pub max_rows: usize,
}

/// Rows a run's next model call has (both guidance passes), or 0 when it is finished: what
/// [`Share::max_rows`] is weighed against.
pub fn rows_left<S: Scheduler>(
    state: &SamplingState,
    scheduler: &S,
    partial: &Option<PartialStep>,
) -> usize {
    match partial {
        Some(p) => p.rows_left(),
        None if state.steps_done() < scheduler.timesteps().len() => state.rows(),
        None => 0,
    }
}

/// One model call for the next `max_rows` rows (at most) of every run's step, in the order
/// given. A run whose step's rows are all predicted takes the step (guidance and its
/// scheduler's step, as [`SamplingState::advance`]) and gets its [`StepOutput`]; a run with
/// rows left keeps them in its [`Share::partial`] for a later call and gets `None`, as does a
/// finished run or one given no rows.
pub fn step_in_parts<M: Denoiser, S: Scheduler>(
    model: &M,
    runs: &mut [Share<'_, S>],
) -> Result<Vec<Option<StepOutput>>> {
    // Each run's rows in this call: (start, len) within its step's query.
    let mut taken = Vec::with_capacity(runs.len());
    for run in runs.iter_mut() {
        if run.partial.is_none() && run.max_rows > 0 {
            *run.partial = run.state.query(run.scheduler).map(|query| PartialStep {
                query,
                parts: Vec::new(),
                rows_done: 0,
            });
        }
        taken.push(match run.partial.as_ref() {
            Some(p) => (p.rows_done, p.rows_left().min(run.max_rows)),
            None => (0, 0),
        });
    }
    let asked: Vec<(&ModelQuery, usize, usize)> = runs
        .iter()
        .zip(&taken)
        .filter(|(_, (_, len))| *len > 0)
        .filter_map(|(run, &(start, len))| Some((&run.partial.as_ref()?.query, start, len)))
        .collect();
    if asked.is_empty() {
        return Ok(runs.iter().map(|_| None).collect());
    }
    let conditional = asked[0].0.class_labels.is_some();
    if asked
        .iter()
        .any(|(q, ..)| q.class_labels.is_some() != conditional)
    {
        return Err(Error::Sampler(
            "runs for a conditional and an unconditional model cannot share a model call".into(),
        ));
    }
    let x = Tensor::cat(
        asked
            .iter()
            .map(|&(q, start, len)| {
                if start == 0 && len == q.timesteps.len() {
                    q.x.clone()
                } else {
                    q.x.clone().narrow(0, start, len)
                }
            })
            .collect(),
        0,
    );
    let timesteps: Vec<f64> = asked
        .iter()
        .flat_map(|&(q, start, len)| q.timesteps[start..start + len].iter().copied())
        .collect();
    let labels: Option<Vec<usize>> = conditional.then(|| {
        asked
            .iter()
            .flat_map(|&(q, start, len)| {
                q.class_labels
                    .iter()
                    .flat_map(move |l| l[start..start + len].iter().copied())
            })
            .collect()
    });
    let prediction = model.predict(x, &timesteps, labels.as_deref());
    let mut row = 0;
    Ok(runs
        .iter_mut()
        .zip(taken)
        .map(|(run, (_, len))| {
            if len == 0 {
                return None;
            }
            let partial = run.partial.as_mut()?;
            partial.parts.push(prediction.clone().narrow(0, row, len));
            partial.rows_done += len;
            row += len;
            if partial.rows_left() > 0 {
                return None;
            }
            let mut done = run.partial.take()?;
            let own = if done.parts.len() == 1 {
                done.parts.pop()?
            } else {
                Tensor::cat(done.parts, 0)
            };
            Some(run.state.advance(run.scheduler, own))
        })
        .collect())
}
