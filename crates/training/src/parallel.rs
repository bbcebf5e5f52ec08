//! Data-parallel training: every global batch is cut into equal shards, one per *rank* (a
//! replica of the model on its own device, run on its own thread), and each rank's gradients
//! are averaged across the ranks by a [`Reducer`] before the global-norm clip and the AdamW
//! step, which every rank then takes alike (one optimiser per rank, as PyTorch's
//! DistributedDataParallel and Burn's `burn-train` do).
//!
//! Two reducers keep the same contract — a mean all-reduce of each gradient (and the loss),
//! the same result on every rank:
//!
//! - [`CollectiveReducer`]: Burn's collective operations (`burn::tensor::distributed`: NCCL on
//!   CUDA devices, the only backend that implements them in Burn 0.22);
//! - [`HostReducer`]: host memory, for the CPU (Burn's flex backend refuses collectives), so
//!   that the sharding, the averaging, the clip and rank 0's I/O are tested without a GPU.
//!
//! The mean over ranks of each shard's mean loss is the global batch's mean loss when the
//! shards are equal, so the averaged gradient is the single-device gradient up to float
//! reassociation.

use std::sync::{Arc, Condvar, Mutex};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::distributed::{
    all_reduce, DistributedConfig, DistributedContext, ReduceOperation,
};
use burn::tensor::{Device, Tensor, TensorData};
use diffusion::UNet;

use crate::error::{Result, TrainError};

/// Averages the ranks' gradients: every rank calls [`Reducer::all_reduce_mean`] for the same
/// step from its own thread, and each gets the mean over the ranks back (the same values on
/// every rank).
pub trait Reducer: Send + Sync {
    /// Ranks taking part.
    fn ranks(&self) -> usize;

    /// The mean over the ranks of `grads` (the gradients of `model`'s parameters, on rank
    /// `rank`'s device) and of `loss` (one element).
    fn all_reduce_mean(
        &self,
        rank: usize,
        model: &UNet,
        grads: GradientsParams,
        loss: Tensor<1>,
    ) -> Result<(GradientsParams, Tensor<1>)>;

    /// A rank failed before it reached the reduction: the others stop waiting for it (and
    /// return an error).
    fn abort(&self);
}

/// The gradients of `model` in visiting order: `(id, shape, tensor)` flattened to one
/// dimension.
fn flat_grads(
    model: &UNet,
    grads: &GradientsParams,
) -> Vec<(burn::module::ParamId, Vec<usize>, Tensor<1>)> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Flat,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let shape = g.dims().to_vec();
                let n: usize = shape.iter().product();
                self.out.push((param.id, shape, g.reshape([n])));
            }
        }
    }
    let mut c = Collect {
        grads,
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Gradients from flat tensors, in [`flat_grads`]' order.
fn unflat_grads(model: &UNet, flat: Flat) -> GradientsParams {
    struct Put {
        flat: std::vec::IntoIter<(burn::module::ParamId, Vec<usize>, Tensor<1>)>,
        out: GradientsParams,
    }
    impl ModuleVisitor for Put {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let next = self.flat.as_slice().first().map(|(id, ..)| *id);
            if next == Some(param.id) {
                if let Some((id, shape, t)) = self.flat.next() {
                    let shape: [usize; D] = shape.try_into().expect("the parameter's rank");
                    self.out.register::<D>(id, t.reshape(shape));
                }
            }
        }
    }
    let mut p = Put {
        flat: flat.into_iter(),
        out: GradientsParams::new(),
    };
    model.visit(&mut p);
    p.out
}

/// A model's gradients in [`flat_grads`]' order.
type Flat = Vec<(burn::module::ParamId, Vec<usize>, Tensor<1>)>;

/// Every gradient of `model` and then `loss`, as one flat tensor (one transfer, one
/// collective), with what [`split`] needs to cut it back.
fn concat(model: &UNet, grads: &GradientsParams, loss: Tensor<1>) -> (Flat, Tensor<1>) {
    let flat = flat_grads(model, grads);
    let mut parts: Vec<Tensor<1>> = flat.iter().map(|(_, _, t)| t.clone()).collect();
    parts.push(loss);
    (flat, Tensor::cat(parts, 0))
}

/// [`concat`]'s tensor (reduced) cut back into gradients and the loss.
fn split(model: &UNet, flat: Flat, all: Tensor<1>) -> (GradientsParams, Tensor<1>) {
    let mut offset = 0;
    let flat = flat
        .into_iter()
        .map(|(id, shape, t)| {
            let n = t.dims()[0];
            let part = all.clone().narrow(0, offset, n);
            offset += n;
            (id, shape, part)
        })
        .collect();
    let loss = all.narrow(0, offset, 1);
    (unflat_grads(model, flat), loss)
}

/// What the host reducer's ranks share for one reduction.
struct Exchange {
    /// Each rank's values of this round.
    slots: Vec<Option<Vec<f32>>>,
    /// Ranks that have deposited this round.
    arrived: usize,
    /// The mean of the last completed round.
    result: Option<Arc<Vec<f32>>>,
    /// Rounds completed.
    generation: u64,
    aborted: bool,
}

/// The mean all-reduce in host memory: each rank copies its gradients to the host, the last to
/// arrive sums them in rank order and divides by the rank count, and every rank copies the
/// mean back to its device. Deterministic: the same sums in the same order every time.
pub struct HostReducer {
    ranks: usize,
    exchange: Mutex<Exchange>,
    done: Condvar,
}

impl HostReducer {
    /// A reducer for `ranks` ranks.
    pub fn new(ranks: usize) -> Self {
        Self {
            ranks: ranks.max(1),
            exchange: Mutex::new(Exchange {
                slots: vec![None; ranks.max(1)],
                arrived: 0,
                result: None,
                generation: 0,
                aborted: false,
            }),
            done: Condvar::new(),
        }
    }

    /// Deposits `values` for `rank` and waits for the mean over every rank.
    fn exchange(&self, rank: usize, values: Vec<f32>) -> Result<Arc<Vec<f32>>> {
        let aborted = || TrainError::Invalid("another data-parallel rank failed".into());
        let mut ex = self.exchange.lock().unwrap_or_else(|e| e.into_inner());
        if ex.aborted {
            return Err(aborted());
        }
        if ex.slots[rank].is_some() {
            return Err(TrainError::Invalid(format!(
                "rank {rank} reduced twice in one round"
            )));
        }
        let generation = ex.generation;
        ex.slots[rank] = Some(values);
        ex.arrived += 1;
        if ex.arrived == self.ranks {
            let slots: Vec<Vec<f32>> = ex
                .slots
                .iter_mut()
                .map(|s| s.take().unwrap_or_default())
                .collect();
            let len = slots[0].len();
            if slots.iter().any(|s| s.len() != len) {
                ex.aborted = true;
                self.done.notify_all();
                return Err(TrainError::Invalid(
                    "data-parallel ranks sent gradients of different sizes".into(),
                ));
            }
            let scale = 1.0 / self.ranks as f32;
            let mean: Vec<f32> = (0..len)
                .map(|i| slots.iter().map(|s| s[i]).sum::<f32>() * scale)
                .collect();
            ex.result = Some(Arc::new(mean));
            ex.arrived = 0;
            ex.generation += 1;
            self.done.notify_all();
        } else {
            while ex.generation == generation && !ex.aborted {
                ex = self.done.wait(ex).unwrap_or_else(|e| e.into_inner());
            }
            if ex.aborted {
                return Err(aborted());
            }
        }
        // The result stays until the next round completes, which needs this rank again.
        Ok(ex.result.clone().expect("a completed round has a result"))
    }
}

impl Reducer for HostReducer {
    fn ranks(&self) -> usize {
        self.ranks
    }

    fn all_reduce_mean(
        &self,
        rank: usize,
        model: &UNet,
        grads: GradientsParams,
        loss: Tensor<1>,
    ) -> Result<(GradientsParams, Tensor<1>)> {
        let device = loss.device();
        let (flat, all) = concat(model, &grads, loss);
        // One transfer: every gradient and the loss in one tensor.
        let values: Vec<f32> = all
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| TrainError::Invalid(format!("reading gradients back: {e:?}")))?;
        let mean = self.exchange(rank, values)?;
        let all = Tensor::<1>::from_data(TensorData::new(mean.to_vec(), [mean.len()]), &device);
        Ok(split(model, flat, all))
    }

    fn abort(&self) {
        let mut ex = self.exchange.lock().unwrap_or_else(|e| e.into_inner());
        ex.aborted = true;
        self.done.notify_all();
    }
}

/// Burn's collective mean all-reduce (NCCL on CUDA devices): the context is started for
/// `devices` when the reducer is made and closed when it is dropped.
pub struct CollectiveReducer {
    devices: Vec<Device>,
    _context: DistributedContext,
}

impl CollectiveReducer {
    /// Starts Burn's communication server for `devices` (rank i is `devices[i]`).
    pub fn new(devices: Vec<Device>) -> Self {
        let context = DistributedContext::init(
            devices.clone(),
            DistributedConfig {
                all_reduce_op: ReduceOperation::Mean,
            },
        );
        Self {
            devices,
            _context: context,
        }
    }
}

impl Reducer for CollectiveReducer {
    fn ranks(&self) -> usize {
        self.devices.len()
    }

    fn all_reduce_mean(
        &self,
        _rank: usize,
        model: &UNet,
        grads: GradientsParams,
        loss: Tensor<1>,
    ) -> Result<(GradientsParams, Tensor<1>)> {
        let (flat, all) = concat(model, &grads, loss);
        // One collective over every gradient and the loss together.
        let all = all_reduce(all, ReduceOperation::Mean, self.devices.clone()).resolve();
        Ok(split(model, flat, all))
    }

    fn abort(&self) {}
}

/// The reducer for `devices`: Burn's collective on CUDA devices, host memory on the CPU.
pub fn reducer_for(devices: &[Device]) -> Arc<dyn Reducer> {
    if devices.iter().any(crate::device::is_cuda) {
        Arc::new(CollectiveReducer::new(devices.to_vec()))
    } else {
        Arc::new(HostReducer::new(devices.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reducer_gives_every_rank_the_same_mean() {
        let r = Arc::new(HostReducer::new(3));
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    let r = r.clone();
                    s.spawn(move || {
                        // Two rounds: the second must not see the first's values.
                        let first = r
                            .exchange(rank, vec![rank as f32, 10.0 * rank as f32])
                            .unwrap();
                        assert_eq!(*first, vec![1.0, 10.0]);
                        r.exchange(rank, vec![1.0, 2.0 * rank as f32])
                            .unwrap()
                            .to_vec()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|v| *v == vec![1.0, 2.0]), "{results:?}");
        // A rank that fails releases the others with an error instead of a hang.
        let r = Arc::new(HostReducer::new(2));
        std::thread::scope(|s| {
            let waiting = {
                let r = r.clone();
                s.spawn(move || r.exchange(0, vec![1.0]))
            };
            std::thread::sleep(std::time::Duration::from_millis(50));
            r.abort();
            assert!(waiting.join().unwrap().is_err());
        });
    }
}
