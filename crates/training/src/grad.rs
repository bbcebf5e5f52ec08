//! Global gradient-norm clipping (Burn's `GradientClippingConfig::Norm` clips each tensor
//! separately; diffusers and PyTorch clip the norm of all gradients together).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Σ_params Σ g² over every float parameter's gradient, as a one-element tensor on the device
/// (`None` when there are no gradients). Nothing is read back.
pub fn grad_sum_squares<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
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
    v.acc
}

/// √(Σ_params Σ g²) over every float parameter's gradient (one read-back).
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    grad_sum_squares(model, grads).map_or(0.0, |s| s.into_scalar::<f64>().sqrt())
}

/// Multiplies every gradient by `factor`, a one-element tensor on the device.
fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: Tensor<1>) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let f = self.factor.clone().reshape([1; D]);
                self.grads.register::<D>(param.id, g * f);
            }
        }
    }
    model.visit(&mut Scale { grads, factor });
}

/// Clips the global gradient norm ‖g‖ = √`sum_squares` to `max_norm` (if positive) on the
/// device, without reading anything back: where ‖g‖ > `max_norm` every gradient is multiplied
/// by `max_norm` / (‖g‖ + 1e-6) (PyTorch's `clip_grad_norm_`), elsewhere by 1. A non-finite
/// norm gives non-finite or unchanged gradients; the caller checks the norm and skips the step.
pub fn clip_by_sum_squares<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    sum_squares: Tensor<1>,
    max_norm: f64,
) {
    if max_norm <= 0.0 {
        return;
    }
    let norm = sum_squares.sqrt();
    let over = norm.clone().greater_elem(max_norm);
    let factor = norm.add_scalar(1e-6).recip().mul_scalar(max_norm);
    let factor = Tensor::<1>::ones([1], &factor.device()).mask_where(over, factor);
    scale_grads(model, grads, factor);
}

/// Clips the global norm to `max_norm` (if positive) and returns the norm before clipping (one
/// read-back). A non-finite norm is returned as is and nothing is scaled: the caller skips the
/// step.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let Some(sum_squares) = grad_sum_squares(model, grads) else {
        return 0.0;
    };
    let norm = sum_squares.clone().into_scalar::<f64>().sqrt();
    if norm.is_finite() {
        clip_by_sum_squares(model, grads, sum_squares, max_norm);
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
