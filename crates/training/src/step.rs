//! One optimisation step ([`train_step`]): the host-side randomness of step k (timesteps,
//! noise, label dropout, the dropout seed — all functions of `(seed, k)`), the forward process,
//! the loss, back-propagation, global-norm clipping and the AdamW update. A step whose loss or
//! gradient norm is not finite changes nothing and is reported as skipped.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use datasets::loader::{mix_seed, Batch};
use diffusion::{mse_loss, q_sample, NoiseRng, NoiseSchedule, UNet};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::grad::{clip_by_sum_squares, grad_sum_squares};
use crate::parallel::Reducer;

/// The host-side randomness of one step.
struct StepNoise {
    timesteps: Vec<usize>,
    noise: Vec<f32>,
    labels: Vec<usize>,
}

const STREAM_STEP: u64 = 3;
const STREAM_DROPOUT: u64 = 4;
/// A data-parallel rank's dropout seed, mixed into the step's.
const STREAM_RANK: u64 = 5;

fn step_noise(config: &TrainConfig, step: u64, labels: &[usize], numel: usize) -> StepNoise {
    let mut rng = NoiseRng::new(mix_seed(config.seed, STREAM_STEP, step));
    let t_max = config.model.schedule.num_train_timesteps as u64;
    let timesteps = labels.iter().map(|_| rng.below(t_max) as usize).collect();
    let noise = rng.normal_vec(numel);
    let null = config.model.unet.num_classes.unwrap_or(0);
    let labels = labels
        .iter()
        .map(|&l| {
            if rng.uniform() < config.label_dropout {
                null
            } else {
                l
            }
        })
        .collect();
    StepNoise {
        timesteps,
        noise,
        labels,
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// The loss before the update (NaN/inf when the step was skipped for it).
    pub loss: f64,
    /// Global gradient norm before clipping (NaN when there was no backward pass).
    pub grad_norm: f64,
    /// Whether the step was skipped as non-finite (the model is then unchanged).
    pub skipped: bool,
}

/// The device-side results of one step that nobody has waited for yet (see [`gradients`]);
/// [`StepOutcome`]s once read back.
#[derive(Debug, Clone)]
pub struct PendingStep {
    /// The loss, one element.
    pub loss: Tensor<1>,
    /// Σ g² over every gradient before clipping, one element.
    pub sum_squares: Tensor<1>,
}

/// The inputs of one forward pass: the images of a batch (or of a rank's shard of it), the
/// step's host randomness for those rows, and the seed of their dropout masks.
struct StepInputs {
    images: Vec<f32>,
    shape: [usize; 4],
    rnd: StepNoise,
    dropout_seed: u64,
}

impl StepInputs {
    /// Step `batch.step`'s inputs: t, ε and label dropout drawn for the whole batch from
    /// `(config.seed, batch.step)`.
    fn new(config: &TrainConfig, batch: Batch) -> Self {
        let rnd = step_noise(config, batch.step, &batch.labels, batch.images.len());
        Self {
            images: batch.images,
            shape: batch.shape,
            rnd,
            dropout_seed: mix_seed(config.seed, STREAM_DROPOUT, batch.step),
        }
    }

    /// `ranks` equal shards: rank r takes rows `[r·B/ranks, (r+1)·B/ranks)` of the images and
    /// of the randomness drawn for the whole batch (so the shards together are the
    /// single-device step), and dropout masks from its own seed (one rank: the step itself).
    fn shards(self, ranks: usize) -> Vec<Self> {
        if ranks <= 1 {
            // One rank is the single-device step, its masks included.
            return vec![self];
        }
        let [b, c, h, w] = self.shape;
        let per = b / ranks;
        (0..ranks)
            .map(|rank| {
                let rows = rank * per..(rank + 1) * per;
                let px = rows.start * c * h * w..rows.end * c * h * w;
                Self {
                    images: self.images[px.clone()].to_vec(),
                    shape: [per, c, h, w],
                    rnd: StepNoise {
                        timesteps: self.rnd.timesteps[rows.clone()].to_vec(),
                        noise: self.rnd.noise[px].to_vec(),
                        labels: self.rnd.labels[rows].to_vec(),
                    },
                    dropout_seed: mix_seed(self.dropout_seed, STREAM_RANK, rank as u64),
                }
            })
            .collect()
    }
}

/// x_t, the model's prediction (in `config.precision`) and the f32 loss of `inputs`, on the
/// autodiff `device` (seeded for the dropout masks first).
fn forward_loss(
    config: &TrainConfig,
    schedule: &NoiseSchedule,
    model: &UNet,
    inputs: StepInputs,
    device: &Device,
) -> Tensor<1> {
    let StepInputs {
        images,
        shape,
        rnd,
        dropout_seed,
    } = inputs;
    device.seed(dropout_seed);
    let x0 = Tensor::<4>::from_data(TensorData::new(images, shape), device);
    let noise = Tensor::<4>::from_data(TensorData::new(rnd.noise, shape), device);
    let xt = q_sample(schedule, x0.clone(), &rnd.timesteps, noise.clone());
    let t_f64: Vec<f64> = rnd.timesteps.iter().map(|&t| t as f64).collect();
    let labels = config.model.unet.num_classes.map(|_| rnd.labels.as_slice());
    // Under bf16 the f32 parameters are cast inside the graph: the gradients reach them in f32.
    let output = model.autocast(config.precision).forward(xt, &t_f64, labels);
    let target = config
        .model
        .prediction_type
        .target(schedule, x0, noise, &rnd.timesteps);
    mse_loss(output, target)
}

/// `grads` clipped to `config.grad_clip` by their global norm, with the step's loss and
/// Σ g² before the clip left on the device.
fn clipped(
    config: &TrainConfig,
    model: &UNet,
    mut grads: GradientsParams,
    loss: Tensor<1>,
) -> (GradientsParams, PendingStep) {
    let sum_squares =
        grad_sum_squares(model, &grads).unwrap_or_else(|| Tensor::<1>::zeros([1], &loss.device()));
    clip_by_sum_squares(model, &mut grads, sum_squares.clone(), config.grad_clip);
    (grads, PendingStep { loss, sum_squares })
}

/// The gradients of one training step of `model` on `batch` (the batch of step `batch.step`),
/// on the autodiff `device`, without waiting for the device: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with
/// t, ε and label dropout drawn from `(config.seed, batch.step)`, the MSE between the
/// prediction and its target (ε, v or x_0), back-propagation and clipping to
/// `config.grad_clip`. The loss, the gradient norm and the clipping factor stay on the device
/// (the [`PendingStep`]): a caller that applies the AdamW step without reading it back reads
/// several steps back at once ([`read_back`]) and rolls back when one is not finite
/// (`crate::window`).
pub fn gradients(
    config: &TrainConfig,
    schedule: &NoiseSchedule,
    model: &UNet,
    batch: Batch,
    device: &Device,
) -> (GradientsParams, PendingStep) {
    let inputs = StepInputs::new(config, batch);
    let loss = forward_loss(config, schedule, model, inputs, device);
    let loss_value = loss.clone().inner();
    let grads = GradientsParams::from_grads(loss.backward(), model);
    clipped(config, model, grads, loss_value)
}

/// The gradients of one data-parallel step on every rank: rank `r` (`ranks[r]`: its replica
/// of the model and its autodiff device) takes its shard of `batch` (`StepInputs::shards`: the
/// step's randomness is drawn once, for the whole batch) on its own thread, the ranks' gradients and losses are averaged by `reducer`, and each rank clips
/// the averaged gradients to `config.grad_clip` by their global norm. Every rank gets the same
/// gradients (on its device) and the same [`PendingStep`]: the single-device step's up to float
/// reassociation. The batch must split evenly.
pub fn parallel_gradients(
    config: &TrainConfig,
    schedule: &NoiseSchedule,
    ranks: &[(UNet, Device)],
    batch: Batch,
    reducer: &dyn Reducer,
) -> Result<Vec<(GradientsParams, PendingStep)>> {
    let n = ranks.len();
    if n != reducer.ranks() || batch.shape[0] % n != 0 {
        return Err(TrainError::Invalid(format!(
            "a batch of {} cannot be split over {n} data-parallel ranks (reducer for {})",
            batch.shape[0],
            reducer.ranks()
        )));
    }
    let shards = StepInputs::new(config, batch).shards(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .iter()
            .zip(shards)
            .enumerate()
            .map(|(rank, ((model, device), inputs))| {
                let (model, device) = (model.clone(), device.clone());
                scope.spawn(move || {
                    let run = std::panic::AssertUnwindSafe(
                        || -> Result<(GradientsParams, PendingStep)> {
                            let (grads, loss_value) = {
                                // Burn's CPU generator is one per process: CPU ranks take
                                // turns to seed it and draw their dropout masks, so each
                                // rank's masks are its own seed's whatever the timing.
                                let _turn = cpu_turn(&device);
                                let loss = forward_loss(config, schedule, &model, inputs, &device);
                                let loss_value = loss.clone().inner();
                                let grads = GradientsParams::from_grads(loss.backward(), &model);
                                (grads, loss_value)
                            };
                            let (grads, loss) =
                                reducer.all_reduce_mean(rank, &model, grads, loss_value)?;
                            Ok(clipped(config, &model, grads, loss))
                        },
                    );
                    let out = std::panic::catch_unwind(run).unwrap_or_else(|_| {
                        Err(TrainError::Invalid(format!(
                            "data-parallel rank {rank} panicked"
                        )))
                    });
                    if out.is_err() {
                        reducer.abort();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Invalid("a data-parallel rank panicked".into()))
                })
            })
            .collect()
    })
}

/// On the CPU, a turn at Burn's process-wide generator (held while a rank seeds it and runs
/// its forward and backward passes); elsewhere (each GPU has its own generator) nothing.
fn cpu_turn(device: &Device) -> Option<std::sync::MutexGuard<'static, ()>> {
    static CPU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    (*device == Device::flex().autodiff()).then(|| CPU.lock().unwrap_or_else(|e| e.into_inner()))
}

/// One training step checked before it is applied: [`gradients`], the loss and gradient norm
/// read back, and the AdamW step only when both are finite (otherwise `model` and `optim` are
/// returned as they were: the step is skipped). The same arithmetic as [`gradients`] followed by
/// the AdamW step unchecked, with nothing to roll back.
pub fn train_step(
    config: &TrainConfig,
    schedule: &NoiseSchedule,
    model: UNet,
    optim: &mut ModuleOptimizer,
    batch: Batch,
    lr: f64,
    device: &Device,
) -> (UNet, StepOutcome) {
    let (grads, pending) = gradients(config, schedule, &model, batch, device);
    let outcome = read_back(&[pending])[0];
    if outcome.skipped {
        (model, outcome)
    } else {
        (optim.step(lr, model, grads), outcome)
    }
}

/// Reads the losses and gradient norms of `pending` back in one transfer. A step is skipped
/// when either is not finite.
pub fn read_back(pending: &[PendingStep]) -> Vec<StepOutcome> {
    if pending.is_empty() {
        return Vec::new();
    }
    let values = Tensor::cat(
        pending
            .iter()
            .flat_map(|p| [p.loss.clone(), p.sum_squares.clone()])
            .collect(),
        0,
    );
    let values: Vec<f64> = values
        .into_data()
        .convert::<f64>()
        .try_into_vec()
        .expect("a float tensor reads back as f64");
    values
        .chunks(2)
        .map(|v| {
            let (loss, grad_norm) = (v[0], v[1].sqrt());
            StepOutcome {
                loss,
                grad_norm,
                skipped: !loss.is_finite() || !grad_norm.is_finite(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::FloatDType;
    use diffusion::{ModelConfig, Precision, UNetConfig};

    #[test]
    fn label_dropout_rate_is_p() {
        let unet = UNetConfig::mnist();
        let mut c = TrainConfig::new("x", ModelConfig::new(unet), 1, 1);
        c.label_dropout = 0.1;
        let labels = vec![3usize; 1000];
        let mut dropped = 0;
        for step in 0..50 {
            let r = step_noise(&c, step, &labels, 1);
            dropped += r.labels.iter().filter(|&&l| l == 10).count();
            assert!(r.labels.iter().all(|&l| l == 3 || l == 10));
            assert!(r.timesteps.iter().all(|&t| t < 1000));
        }
        let rate = dropped as f64 / 50_000.0;
        // Binomial standard error at n = 50,000: 0.0013.
        assert!((rate - 0.1).abs() < 0.006, "dropout rate {rate}");
        // Timesteps cover the range uniformly: mean ≈ 499.5.
        let t: Vec<usize> = (0..20)
            .flat_map(|s| step_noise(&c, s, &labels, 1).timesteps)
            .collect();
        let mean = t.iter().sum::<usize>() as f64 / t.len() as f64;
        assert!((mean - 499.5).abs() < 10.0, "{mean}");
    }

    fn tiny() -> (TrainConfig, NoiseSchedule, Device) {
        let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![])
            .with_num_res_blocks(1)
            .with_num_classes(Some(3));
        let config = TrainConfig::new("fixture", ModelConfig::new(unet), 2, 2);
        let schedule = config.model.schedule.build().unwrap();
        (config, schedule, Device::flex().autodiff())
    }

    fn batch(step: u64, fill: f32) -> Batch {
        let images = (0..2 * 64)
            .map(|i| fill * ((i % 7) as f32 / 3.0 - 1.0))
            .collect();
        Batch {
            step,
            images,
            labels: vec![0, 2],
            shape: [2, 1, 8, 8],
        }
    }

    /// The output convolution's weight as host values (zero at init, so the first step's
    /// gradient reaches it before any other layer).
    fn conv_out(model: &UNet) -> Vec<f32> {
        model
            .conv_out
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap()
    }

    #[test]
    fn a_step_is_a_function_of_model_batch_and_seed_and_updates_the_model() {
        let (mut config, schedule, device) = tiny();
        // No dropout: its masks come from Burn's process-global RNG, which the tests running
        // beside this one draw from too (tests/train.rs covers dropout under bf16).
        config.model.unet.dropout = 0.0;
        device.seed(1);
        // Random weights throughout (the output convolution starts at zero, which would make
        // the first loss independent of everything the precision changes).
        let model = config.model.unet.init(&device).unwrap().randomize(2, 0.05);
        let before = conv_out(&model);
        let mut loss_f32 = None;
        for precision in [Precision::F32, Precision::Bf16] {
            config.precision = precision;
            let run = |step: u64| {
                let mut optim = config.optimizer();
                train_step(
                    &config,
                    &schedule,
                    model.clone(),
                    &mut optim,
                    batch(step, 1.0),
                    1e-3,
                    &device,
                )
            };
            let ((a, oa), (b, ob)) = (run(5), run(5));
            assert!(
                !oa.skipped && oa.loss.is_finite() && oa.grad_norm > 0.0,
                "{precision}: {oa:?}"
            );
            assert_eq!(oa.loss.to_bits(), ob.loss.to_bits(), "same step, same loss");
            assert_eq!(conv_out(&a), conv_out(&b), "same step, same update");
            assert_ne!(conv_out(&a), before, "the step changed the weights");
            // The master weights stay f32 whatever the step computed in.
            assert_eq!(a.compute_dtype(), FloatDType::F32);
            // Another step index draws other timesteps and noise.
            assert_ne!(oa.loss.to_bits(), run(6).1.loss.to_bits());
            match loss_f32 {
                None => loss_f32 = Some(oa.loss),
                // bf16 rounds (so the loss differs) but computes the same step.
                Some(l) => {
                    assert_ne!(oa.loss.to_bits(), l.to_bits(), "bf16 computed in f32");
                    assert!((oa.loss / l - 1.0).abs() < 0.02, "{} vs {l}", oa.loss);
                }
            }
        }
    }

    #[test]
    fn a_non_finite_batch_is_skipped_and_changes_nothing() {
        let (mut config, schedule, device) = tiny();
        for precision in [Precision::F32, Precision::Bf16] {
            config.precision = precision;
            let model = config.model.unet.init(&device).unwrap();
            let before = conv_out(&model);
            let mut optim = config.optimizer();
            let (after, outcome) = train_step(
                &config,
                &schedule,
                model,
                &mut optim,
                batch(0, f32::NAN),
                1e-3,
                &device,
            );
            assert!(
                outcome.skipped && !outcome.loss.is_finite(),
                "{precision}: {outcome:?}"
            );
            assert_eq!(conv_out(&after), before);
        }
    }
}
