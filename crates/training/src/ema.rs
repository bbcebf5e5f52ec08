//! Exponential moving average of the weights (Polyak averaging), as in DDPM and
//! guided-diffusion: every sample and export comes from the EMA copy.
//!
//! ema ← d · ema + (1 − d) · θ after each optimiser step, with the warmup
//! d_n = min(decay, (1 + n) / (10 + n)) (n = updates so far) so that early averages are not
//! dominated by the random initialisation.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// EMA settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ema {
    /// Target decay (e.g. 0.999).
    pub decay: f64,
    /// Use the (1 + n) / (10 + n) warmup.
    pub warmup: bool,
}

impl Ema {
    /// The decay used for update number `num_updates` (zero-based).
    pub fn decay_at(&self, num_updates: u64) -> f64 {
        if self.warmup {
            let n = num_updates as f64;
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }

    /// Moves `ema` towards `model`'s parameters. `ema` must share `model`'s parameter ids
    /// (make it with `model.valid()`; checkpoints keep the ids). Returns the updated copy.
    pub fn update<M: Module>(&self, ema: M, model: &M, num_updates: u64) -> M {
        let mut grab = Grab(HashMap::new());
        model.visit(&mut grab);
        let decay = self.decay_at(num_updates);
        let mut mapper = Blend {
            source: grab.0,
            decay,
            missing: 0,
        };
        let ema = ema.map(&mut mapper);
        assert_eq!(
            mapper.missing, 0,
            "the EMA model does not share the model's parameter ids"
        );
        ema
    }
}

/// Collects each float parameter (detached from autodiff) by id.
struct Grab(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for Grab {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.0.insert(param.id, t.reshape([n]));
    }
}

struct Blend {
    source: HashMap<ParamId, Tensor<1>>,
    decay: f64,
    missing: usize,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(src) = self.source.remove(&param.id) else {
            self.missing += 1;
            return param;
        };
        let d = self.decay;
        param.map(|e| {
            let dims = e.dims();
            e.mul_scalar(d) + src.reshape(dims).mul_scalar(1.0 - d)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    fn values(m: &Linear) -> Vec<f32> {
        m.weight.val().into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn warmup_decay_values() {
        let e = Ema {
            decay: 0.999,
            warmup: true,
        };
        assert!((e.decay_at(0) - 0.1).abs() < 1e-12);
        assert!((e.decay_at(90) - 91.0 / 100.0).abs() < 1e-12);
        assert_eq!(e.decay_at(1_000_000), 0.999);
        let plain = Ema {
            decay: 0.9,
            warmup: false,
        };
        assert_eq!(plain.decay_at(0), 0.9);
    }

    #[test]
    fn update_is_the_weighted_average() {
        let device = Device::flex();
        let model = LinearConfig::new(3, 2).init(&device);
        let ema = model.valid();
        // Move the model's weights to a known value, keeping ids.
        let target = model.clone().map(&mut SetTo(2.0));
        let before = values(&ema);
        let e = Ema {
            decay: 0.75,
            warmup: false,
        };
        let after = e.update(ema, &target, 0);
        for (a, b) in values(&after).iter().zip(&before) {
            assert!((a - (0.75 * b + 0.25 * 2.0)).abs() < 1e-6);
        }
    }

    struct SetTo(f32);
    impl ModuleMapper for SetTo {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let v = self.0;
            p.map(|t| t.zeros_like().add_scalar(v))
        }
    }
}
