//! Global gradient-norm clipping (Burn's `GradientClippingConfig::Norm` clips each tensor
//! separately; diffusers and PyTorch clip the norm of all gradients together).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// √(Σ_params Σ g²) over every float parameter's gradient (one read-back).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        acc: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.square().sum();
                self.acc = Some(match self.acc.take() {
                    Some(a) => a + s,
                    None => s,
                });
            }
        }
    }
    let mut v = SumSquares { grads, acc: None };
    model.visit(&mut v);
    v.acc.map_or(0.0, |a| (a.into_scalar::<f64>()).sqrt())
}

/// Multiplies every gradient by `factor`.
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads
                    .register::<D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// Clips the global norm to `max_norm` (if positive) and returns the norm before clipping.
/// A non-finite norm is returned as is and nothing is scaled: the caller skips the step.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(model, grads);
    if norm.is_finite() && max_norm > 0.0 && norm > max_norm {
        scale_grads(model, grads, max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    #[test]
    fn global_norm_and_clipping() {
        let device = Device::flex().autodiff();
        let model = LinearConfig::new(4, 3).init(&device);
        let x = Tensor::<2>::ones([2, 4], &device);
        let loss = model.forward(x).sum().mul_scalar(10.0);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        // d(10·Σ(xW + b))/dW = 10 · Σ_batch x = 20 per entry (12 entries); d/db = 20 (3 entries).
        let expect = (15.0f64 * 400.0).sqrt();
        let norm = clip_global_norm(&model, &mut grads, 1.0);
        assert!((norm - expect).abs() < 1e-3, "{norm} vs {expect}");
        let after = global_grad_norm(&model, &grads);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
