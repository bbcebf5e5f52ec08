//! Steps in windows: several optimisation steps queued on the device before the host reads
//! anything back ([`run_window`]).
//!
//! Reading the loss every step makes the host wait for the device every step, so on a GPU the
//! next step's kernels are only queued once the previous step has finished. A window of k
//! steps is queued without waiting ([`gradients`](crate::step::gradients) and the AdamW step)
//! and read back once. A step whose loss or gradient norm is not finite must change nothing,
//! and the later steps of its window were already queued on top of its update; so the window
//! is rolled back to its start (the model, EMA and optimiser handles kept there), the steps
//! before the bad one are replayed, the bad one is skipped, and the steps after it are handed
//! back to be run again. The result is exactly that of checking every step
//! ([`train_step`](crate::step::train_step)). A window of one step (the CPU's default, where
//! waiting costs nothing) is that checked step itself: read back before its update, nothing to
//! roll back.

use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use datasets::loader::Batch;
use diffusion::{NoiseSchedule, UNet};

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::error::Result;
use crate::lr::LrSchedule;
use crate::parallel::Reducer;
use crate::step::{gradients, parallel_gradients, read_back, train_step, PendingStep, StepOutcome};

/// What training updates every step: the model, its EMA and the optimiser state, and the count
/// of EMA updates (which sets the EMA's warmup decay); in data-parallel training also the other
/// ranks' replicas (rank 0 is `model` and `optim`).
#[derive(Clone)]
pub struct Trainee {
    /// The model being trained (autodiff): rank 0's.
    pub model: UNet,
    /// Its exponential moving average.
    pub ema: UNet,
    /// AdamW's state.
    pub optim: ModuleOptimizer,
    /// EMA updates so far.
    pub ema_updates: u64,
    /// Ranks 1, 2, … of data-parallel training (empty on one device).
    pub replicas: Vec<Replica>,
}

/// A data-parallel rank other than rank 0: its copy of the model and of the optimiser, on its
/// device. Every rank takes the same averaged gradients, so the copies stay equal to rank 0's.
#[derive(Clone)]
pub struct Replica {
    /// The model (autodiff), on `device`.
    pub model: UNet,
    /// Its optimiser.
    pub optim: ModuleOptimizer,
    /// Its autodiff device.
    pub device: Device,
}

/// What a window needs besides the trainee.
pub struct StepContext<'a> {
    /// The run's settings.
    pub config: &'a TrainConfig,
    /// The noise schedule.
    pub schedule: &'a NoiseSchedule,
    /// The learning rate of each step.
    pub lr: &'a LrSchedule,
    /// The EMA's settings.
    pub ema: Ema,
    /// The autodiff device (rank 0's).
    pub device: &'a Device,
    /// Averages the ranks' gradients in data-parallel training (`None` on one device).
    pub reducer: Option<&'a dyn Reducer>,
}

/// Runs `batches` (consecutive steps) as one window on `trainee` and returns it with the
/// outcome of each step it settled: all of them, or those up to and including the first
/// non-finite one, which is skipped; the batches after it were not applied and must be run
/// again by the caller.
pub fn run_window(
    ctx: &StepContext,
    trainee: Trainee,
    batches: &[Batch],
) -> Result<(Trainee, Vec<StepOutcome>)> {
    if let [batch] = batches {
        // One step (the CPU's default): checked before its update, so no snapshot is kept and
        // the weights, moments and EMA update in place.
        let (trainee, step) = advance(ctx, trainee, batch.clone(), true)?;
        let Step::Settled(outcome) = step else {
            unreachable!("a checked step is settled")
        };
        return Ok((trainee, vec![outcome]));
    }
    let start = trainee.clone();
    let mut trainee = trainee;
    let mut pending = Vec::with_capacity(batches.len());
    for batch in batches {
        let step;
        (trainee, step) = advance(ctx, trainee, batch.clone(), false)?;
        let Step::Queued(p) = step else {
            unreachable!("an unchecked step is queued")
        };
        pending.push(p);
    }
    let mut outcomes = read_back(&pending);
    let Some(bad) = outcomes.iter().position(|o| o.skipped) else {
        return Ok((trainee, outcomes));
    };
    // Roll back and replay the steps before the bad one; their outcomes are already known.
    trainee = start;
    for batch in &batches[..bad] {
        (trainee, _) = advance(ctx, trainee, batch.clone(), false)?;
    }
    outcomes.truncate(bad + 1);
    Ok((trainee, outcomes))
}

/// What [`advance`] knows of a step.
enum Step {
    /// Read back (and skipped when not finite).
    Settled(StepOutcome),
    /// Applied without waiting; its loss and gradient norm are still on the device.
    Queued(PendingStep),
}

/// One step of `trainee` on `batch`, then its EMA update. `checked`: [`train_step`], which
/// reads the loss and gradient norm back before the AdamW step and skips the step when they are
/// not finite; otherwise [`gradients`] and the AdamW step queued without waiting. The trainee
/// moves through by value, so that no second handle keeps Burn from updating weights, moments
/// and EMA in place.
fn advance(
    ctx: &StepContext,
    trainee: Trainee,
    batch: Batch,
    checked: bool,
) -> Result<(Trainee, Step)> {
    let Trainee {
        model,
        ema,
        mut optim,
        ema_updates,
        replicas,
    } = trainee;
    let lr = ctx.lr.lr(batch.step);
    let (config, schedule, device) = (ctx.config, ctx.schedule, ctx.device);
    let (model, replicas, step) = match ctx.reducer {
        Some(reducer) => {
            let ranks: Vec<(UNet, Device)> = std::iter::once((model.clone(), device.clone()))
                .chain(replicas.iter().map(|r| (r.model.clone(), r.device.clone())))
                .collect();
            let results = parallel_gradients(config, schedule, &ranks, batch, reducer)?;
            // No second handle on the weights, so that the AdamW steps update them in place.
            drop(ranks);
            let pending = results[0].1.clone();
            let step = if checked {
                Step::Settled(read_back(&[pending])[0])
            } else {
                Step::Queued(pending)
            };
            if let Step::Settled(StepOutcome { skipped: true, .. }) = step {
                (model, replicas, step)
            } else {
                // Every rank takes the same step with the same averaged gradients.
                let mut grads = results.into_iter().map(|(g, _)| g);
                let model = optim.step(lr, model, grads.next().expect("rank 0"));
                let replicas = replicas
                    .into_iter()
                    .zip(grads)
                    .map(|(mut r, g)| {
                        r.model = r.optim.step(lr, r.model, g);
                        r
                    })
                    .collect();
                (model, replicas, step)
            }
        }
        None if checked => {
            let (model, outcome) =
                train_step(config, schedule, model, &mut optim, batch, lr, device);
            (model, replicas, Step::Settled(outcome))
        }
        None => {
            let (grads, pending) = gradients(config, schedule, &model, batch, device);
            (
                optim.step(lr, model, grads),
                replicas,
                Step::Queued(pending),
            )
        }
    };
    let (ema, ema_updates) = match step {
        Step::Settled(StepOutcome { skipped: true, .. }) => (ema, ema_updates),
        _ => (ctx.ema.update(ema, &model, ema_updates), ema_updates + 1),
    };
    let trainee = Trainee {
        model,
        ema,
        optim,
        ema_updates,
        replicas,
    };
    Ok((trainee, step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use diffusion::{ModelConfig, UNetConfig};

    fn tiny() -> (TrainConfig, NoiseSchedule, Device) {
        let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![])
            .with_num_res_blocks(1)
            .with_num_classes(Some(3))
            .with_dropout(0.0);
        let mut config = TrainConfig::new("fixture", ModelConfig::new(unet), 8, 2);
        config.grad_clip = 0.05; // small enough that every step is clipped
        let schedule = config.model.schedule.build().unwrap();
        (config, schedule, Device::flex().autodiff())
    }

    fn batch(step: u64, fill: f32) -> Batch {
        let images = (0..2 * 64)
            .map(|i| fill * (((i + step as usize) % 7) as f32 / 3.0 - 1.0))
            .collect();
        Batch {
            step,
            images,
            labels: vec![0, 2],
            shape: [2, 1, 8, 8],
        }
    }

    fn values(m: &UNet) -> Vec<Vec<f32>> {
        struct All(Vec<Vec<f32>>);
        impl burn::module::ModuleVisitor for All {
            fn visit_float<const D: usize>(
                &mut self,
                p: &burn::module::Param<burn::tensor::Tensor<D>>,
            ) {
                self.0
                    .push(p.val().into_data().convert::<f32>().try_into_vec().unwrap());
            }
        }
        let mut all = All(Vec::new());
        m.visit(&mut all);
        all.0
    }

    /// Steps 0..6 with a non-finite batch at step 3: checked every step, and in windows of 4
    /// (the bad step in the middle of the first window), give the same outcomes and the same
    /// model, EMA and optimiser state.
    #[test]
    fn a_window_with_a_bad_step_equals_checking_every_step() {
        let (config, schedule, device) = tiny();
        device.seed(3);
        let model = config.model.unet.init(&device).unwrap();
        let batches: Vec<Batch> = (0..6)
            .map(|s| batch(s, if s == 3 { f32::NAN } else { 1.0 }))
            .collect();
        let lr = config.lr_schedule();
        let ema_cfg = config.ema();

        // Every step checked.
        let mut m = model.clone();
        let mut ema = model.valid();
        let mut optim = config.optimizer();
        let mut n = 0;
        let mut eager = Vec::new();
        for b in &batches {
            let o;
            (m, o) = train_step(
                &config,
                &schedule,
                m,
                &mut optim,
                b.clone(),
                lr.lr(b.step),
                &device,
            );
            if !o.skipped {
                ema = ema_cfg.update(ema, &m, n);
                n += 1;
            }
            eager.push(o);
        }
        assert!(eager[3].skipped && eager.iter().filter(|o| o.skipped).count() == 1);

        // Windows of 4 (the deferred steps, rolled back at the bad one) and of 1 (each step
        // checked before its update), re-running what a window hands back.
        let ctx = StepContext {
            config: &config,
            schedule: &schedule,
            lr: &lr,
            ema: ema_cfg,
            device: &device,
            reducer: None,
        };
        let max_diff = |a: &UNet, b: &UNet| {
            values(a)
                .iter()
                .flatten()
                .zip(values(b).iter().flatten())
                // A NaN difference counts as infinite (f32::max would drop it).
                .map(|(x, y)| {
                    if (x - y).is_nan() {
                        f32::INFINITY
                    } else {
                        (x - y).abs()
                    }
                })
                .fold(0.0f32, f32::max)
        };
        for size in [4, 1] {
            let mut trainee = Trainee {
                model: model.clone(),
                ema: model.valid(),
                optim: config.optimizer(),
                ema_updates: 0,
                replicas: Vec::new(),
            };
            let mut windowed = Vec::new();
            let mut next = 0;
            while next < batches.len() {
                let end = (next + size).min(batches.len());
                let settled;
                (trainee, settled) = run_window(&ctx, trainee, &batches[next..end]).unwrap();
                assert!(!settled.is_empty());
                next += settled.len();
                windowed.extend(settled);
            }
            assert_eq!(windowed.len(), 6);
            // Alone these are equal bit for bit; with other tests running, the CPU backend's
            // parallel float sums depend on thread scheduling (last bits of the gradient
            // norm), so compare within a tolerance far below one step's update (lr 2e-4).
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(1.0);
            for (a, b) in eager.iter().zip(&windowed) {
                assert_eq!(a.skipped, b.skipped, "windows of {size}");
                if !a.skipped {
                    assert!(
                        close(a.loss, b.loss) && close(a.grad_norm, b.grad_norm),
                        "windows of {size}: {a:?} vs {b:?}"
                    );
                }
            }
            assert_eq!(trainee.ema_updates, n, "windows of {size}");
            assert!(
                max_diff(&trainee.model, &m) < 1e-6,
                "model, windows of {size}"
            );
            assert!(
                max_diff(&trainee.ema, &ema) < 1e-6,
                "EMA, windows of {size}"
            );
            // The optimiser state: one more step from both must give the same weights.
            let b = batch(6, 1.0);
            let mut eager_optim = optim.clone();
            let (m1, _) = train_step(
                &config,
                &schedule,
                m.clone(),
                &mut eager_optim,
                b.clone(),
                1e-3,
                &device,
            );
            let (m2, _) = train_step(
                &config,
                &schedule,
                trainee.model,
                &mut trainee.optim,
                b,
                1e-3,
                &device,
            );
            assert!(
                max_diff(&m1, &m2) < 1e-6,
                "optimiser state, windows of {size}"
            );
        }
    }
}
