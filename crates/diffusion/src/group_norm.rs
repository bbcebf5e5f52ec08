//! Group normalisation (Wu & He, 2018) with a fused kernel for f32 tensors on the Flex CPU
//! backend.
//!
//! Burn composes GroupNorm from about ten tensor operations (mean, subtract, square, mean,
//! add, sqrt, divide, multiply, add), each a pass over memory and, under autodiff, a backward
//! node of its own. Here the forward is two passes per group (statistics, then
//! `y = x·a_c + b_c` with `a_c = γ_c/σ`, `b_c = β_c − μ·a_c`), and the backward two more, from
//! the standard result for x̂ = (x − μ)/σ over a group of n values:
//!
//! `∂L/∂x = (1/σ)·(g − mean(g) − x̂·mean(g·x̂))` with `g = γ_c·∂L/∂y`,
//! `∂L/∂γ_c = Σ ∂L/∂y·x̂`, `∂L/∂β_c = Σ ∂L/∂y`.
//!
//! With a SiLU after the norm ([`forward_silu`]) the SiLU is applied in the write pass, and the
//! backward pass first turns ∂L/∂(silu(z)) into ∂L/∂z = ∂L/∂y·σ(z)·(1 + z·(1 − σ(z))), z
//! recomputed from x and the statistics (one node, no stored z).
//!
//! The variance is the biased one with ε inside the square root, as in Burn and PyTorch.
//! Non-affine norms, other dtypes and other backends use Burn's `GroupNorm::forward`.

use burn::nn::GroupNorm;
use burn::tensor::Tensor;

/// [`GroupNorm::forward`], fused on Flex.
///
/// # Shapes
/// - `input`: `[batch, num_channels, ...]`; the output has the same shape.
pub fn forward<const D: usize>(norm: &GroupNorm, input: Tensor<D>) -> Tensor<D> {
    fused(norm, input, false)
}

/// `silu(norm.forward(input))`, fused on Flex: the SiLU is applied as the normalised values
/// are written (one pass over memory fewer), and under autodiff it is one node.
///
/// # Shapes
/// - `input`: `[batch, num_channels, ...]`; the output has the same shape.
pub fn forward_silu<const D: usize>(norm: &GroupNorm, input: Tensor<D>) -> Tensor<D> {
    fused(norm, input, true)
}

/// GroupNorm, then SiLU if `silu`: the fused kernels where they apply, Burn's ops otherwise.
fn fused<const D: usize>(norm: &GroupNorm, input: Tensor<D>, silu: bool) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let input = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) => {
            match kernels::Geometry::new(&input.dims(), norm.num_groups, norm.epsilon) {
                Some(g) => match flex::try_group_norm(g, (input, gamma.val(), beta.val()), silu) {
                    Ok(y) => return y,
                    Err((input, _, _)) => input,
                },
                None => input,
            }
        }
        _ => input,
    };
    let y = norm.forward(input);
    if silu {
        crate::silu::silu(y)
    } else {
        y
    }
}

#[cfg(feature = "flex")]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod flex {
    use super::kernels::{self, Geometry};
    use crate::flex_tensor::{on_autodiff, plain, values};
    use burn::backend::flex::FlexTensor;
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor, TensorData};

    /// The inputs (x, γ, β), handed back when the fused path does not apply.
    pub(super) type Inputs<const D: usize> = (Tensor<D>, Tensor<1>, Tensor<1>);

    /// GroupNorm (then SiLU if `silu`) of f32 tensors on Flex, plain or autodiff; hands the
    /// inputs back otherwise.
    pub(super) fn try_group_norm<const D: usize>(
        g: Geometry,
        (x, gamma, beta): Inputs<D>,
        silu: bool,
    ) -> Result<Tensor<D>, Inputs<D>> {
        let f32_only = [x.dtype(), gamma.dtype(), beta.dtype()]
            .iter()
            .all(|&d| d == DType::F32);
        if !f32_only {
            return Err((x, gamma, beta));
        }
        if let (Some(xp), Some(gp), Some(bp)) = (plain(&x), plain(&gamma), plain(&beta)) {
            let (y, _) = forward(&g, &xp, &gp, &bp, silu);
            return Ok(Tensor::from_primitive::<Flex>(y));
        }
        let inputs = (x, gamma, beta);
        on_autodiff!(inputs => |C| super::autodiff::try_group_norm::<C, D>(g, inputs, silu))
    }

    /// The normalised tensor (through SiLU if `silu`) and the (mean, 1/σ) of every (image,
    /// group).
    pub(super) fn forward(
        g: &Geometry,
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: &FlexTensor,
        silu: bool,
    ) -> (FlexTensor, Vec<[f32; 2]>) {
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        let shape = x.layout().shape().clone();
        let (y, stats) = kernels::forward(g, values(&x), values(&gamma), values(&beta), silu);
        (FlexTensor::from_data(TensorData::new(y, shape)), stats)
    }
}

#[cfg(all(feature = "flex", feature = "autodiff"))]
// `Err` hands the inputs back for Burn's own op (the routine fallback, not an error); boxing
// them to satisfy the lint would allocate on every call.
#[allow(clippy::result_large_err)]
mod autodiff {
    use super::flex::Inputs;
    use super::kernels::{self, Geometry};
    use crate::flex_tensor::{tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::autodiff::NodeId;
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
    use burn::tensor::{Tensor, TensorData};

    /// Backward step of GroupNorm (and the SiLU after it if the flag is set); parents are
    /// (x, γ, β).
    #[derive(Debug)]
    struct GroupNormBackward;

    /// The checkpointed x, γ and (with SiLU) β, the statistics of the forward pass and the
    /// geometry.
    type State = (NodeId, NodeId, Option<NodeId>, Vec<[f32; 2]>, Geometry);

    impl Backward<Flex, 3> for GroupNormBackward {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
            let (x_id, gamma_id, beta_id, stats, g) = ops.state;
            let mut retrieve = |id| {
                checkpointer
                    .retrieve_node_output::<FlexTensor>(id)
                    .to_contiguous()
            };
            let (x, gamma) = (retrieve(x_id), retrieve(gamma_id));
            let beta = beta_id.map(&mut retrieve);
            let shape = x.layout().shape().clone();
            let (dx, dgamma, dbeta) = kernels::backward(
                &g,
                values(&x),
                (values(&gamma), beta.as_ref().map(values)),
                values(&grad),
                &stats,
            );
            let [node_x, node_gamma, node_beta] = ops.parents;
            if let Some(node) = node_x {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
            }
            if let Some(node) = node_gamma {
                grads.register::<Flex>(node.id, tensor(dgamma, [g.channels]));
            }
            if let Some(node) = node_beta {
                grads.register::<Flex>(node.id, tensor(dbeta, [g.channels]));
            }
        }
    }

    /// GroupNorm (then SiLU if `silu`) as one autodiff node on `Autodiff<Flex, C>`; hands the
    /// inputs back if they are not all on that backend.
    pub(super) fn try_group_norm<C: CheckpointStrategy, const D: usize>(
        g: Geometry,
        (x, gamma, beta): Inputs<D>,
        silu: bool,
    ) -> Result<Tensor<D>, Inputs<D>>
    where
        DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
    {
        let converted = (
            x.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            gamma.clone().try_into_primitive::<Autodiff<Flex, C>>(),
            beta.clone().try_into_primitive::<Autodiff<Flex, C>>(),
        );
        let (Ok(x_ad), Ok(g_ad), Ok(b_ad)) = converted else {
            return Err((x, gamma, beta));
        };
        let (y, stats) = super::flex::forward(
            &g,
            x_ad.primitive(),
            g_ad.primitive(),
            b_ad.primitive(),
            silu,
        );
        let prep = GroupNormBackward
            .prepare::<C>([x_ad.node(), g_ad.node(), b_ad.node()])
            .compute_bound()
            .stateful();
        let output = match prep {
            OpsKind::Tracked(mut prep) => {
                let (x_state, g_state) = (prep.checkpoint(&x_ad), prep.checkpoint(&g_ad));
                let b_state = silu.then(|| prep.checkpoint(&b_ad));
                prep.finish((x_state, g_state, b_state, stats, g), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(output))
    }
}

#[cfg(feature = "flex")]
mod kernels {
    //! The per-group loops on f32 slices laid out as `[batch, channels, spatial…]`.

    use crate::silu::kernels::sigmoid;
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// Calls of [`forward`] and [`backward`], so tests can check that the fast path ran.
    #[cfg(test)]
    pub(super) static CALLS: crate::flex_tensor::Calls = crate::flex_tensor::Calls::new();

    /// Sizes of one GroupNorm.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Geometry {
        pub batch: usize,
        pub channels: usize,
        pub groups: usize,
        /// Elements per channel (the product of the spatial sizes).
        pub spatial: usize,
        pub epsilon: f64,
    }

    impl Geometry {
        /// `None` when the shape does not fit (rank < 3, groups not dividing the channels,
        /// empty tensors): Burn's GroupNorm then reports it.
        pub fn new(shape: &[usize], groups: usize, epsilon: f64) -> Option<Self> {
            if shape.len() < 3 || groups == 0 || !shape[1].is_multiple_of(groups) {
                return None;
            }
            let g = Self {
                batch: shape[0],
                channels: shape[1],
                groups,
                spatial: shape[2..].iter().product(),
                epsilon,
            };
            (g.batch * g.channels * g.spatial > 0).then_some(g)
        }

        fn group_len(&self) -> usize {
            self.channels / self.groups * self.spatial
        }
    }

    /// Sixteen running sums, so the compiler can keep them in vector registers (a single f32
    /// or f64 accumulator is a serial dependency chain that does not vectorise).
    const LANES: usize = 16;

    /// `Σ f(a_i, b_i)`, summed lane-wise.
    #[inline(always)]
    fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(&x, &y)| f(x, y))
            .sum();
        for (x, y) in ca.zip(cb) {
            for lane in 0..LANES {
                acc[lane] += f(x[lane], y[lane]);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// Normalises one (image, group) block (then SiLU if `SILU`) and returns its (μ, 1/σ).
    #[inline(always)]
    fn forward_group<const SILU: bool, const FMA: bool>(
        g: &Geometry,
        c0: usize,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        gamma: &[f32],
        beta: &[f32],
    ) -> [f32; 2] {
        let n = x.len() as f64;
        let mean = (sum2(x, x, |v, _| v) as f64 / n) as f32;
        let var = sum2(x, x, |v, _| (v - mean) * (v - mean)) as f64 / n;
        let rstd = (1.0 / (var + g.epsilon).sqrt()) as f32;
        for ((y, x), c) in y
            .chunks_exact_mut(g.spatial)
            .zip(x.chunks_exact(g.spatial))
            .zip(c0..)
        {
            let a = gamma[c] * rstd;
            let b = beta[c] - mean * a;
            for (y, &x) in y.iter_mut().zip(x) {
                let v = x * a + b;
                y.write(if SILU { v * sigmoid::<FMA>(v) } else { v });
            }
        }
        [mean, rstd]
    }

    /// Gradients of one (image, group) block: writes ∂L/∂x and the per-channel
    /// (Σ ∂L/∂z, Σ ∂L/∂z·x̂) into `sums`, where z is the norm's output. With `SILU`, `dy` is
    /// ∂L/∂silu(z), turned into ∂L/∂z (z recomputed with `beta`) in `dx` first, and ∂L/∂x is
    /// then written over it.
    #[inline(always)]
    fn backward_group<const SILU: bool, const FMA: bool>(
        g: &Geometry,
        c0: usize,
        [mean, rstd]: [f32; 2],
        (x, dy, dx): (&[f32], &[f32], &mut [MaybeUninit<f32>]),
        (gamma, beta): (&[f32], &[f32]),
        sums: &mut [[f64; 2]],
    ) {
        if !SILU {
            let (m1, m2) = group_sums(g, c0, mean, rstd, (x, dy), gamma, sums);
            let coefficients = dx_coefficients(mean, rstd, m1, m2);
            for (((dx, x), dy), c) in dx
                .chunks_exact_mut(g.spatial)
                .zip(x.chunks_exact(g.spatial))
                .zip(dy.chunks_exact(g.spatial))
                .zip(c0..)
            {
                let [alpha, beta, delta] = coefficients(gamma[c]);
                for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                    dx.write(alpha * dy + beta * x + delta);
                }
            }
            return;
        }
        for (((dz, x), dy), c) in dx
            .chunks_exact_mut(g.spatial)
            .zip(x.chunks_exact(g.spatial))
            .zip(dy.chunks_exact(g.spatial))
            .zip(c0..)
        {
            let a = gamma[c] * rstd;
            let b = beta[c] - mean * a;
            for ((dz, &x), &dy) in dz.iter_mut().zip(x).zip(dy) {
                let z = x * a + b;
                let s = sigmoid::<FMA>(z);
                dz.write(dy * s * (1.0 + z * (1.0 - s)));
            }
        }
        // SAFETY: the loop above wrote every element (the chunks tile `dx`: its length is
        // that of `x`, a whole number of channels).
        let dz = unsafe { &mut *(dx as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let (m1, m2) = group_sums(g, c0, mean, rstd, (x, dz), gamma, sums);
        let coefficients = dx_coefficients(mean, rstd, m1, m2);
        for ((dz, x), c) in dz
            .chunks_exact_mut(g.spatial)
            .zip(x.chunks_exact(g.spatial))
            .zip(c0..)
        {
            let [alpha, beta, delta] = coefficients(gamma[c]);
            for (d, &x) in dz.iter_mut().zip(x) {
                *d = alpha * *d + beta * x + delta;
            }
        }
    }

    /// Per channel of the block, (Σ dz, Σ dz·x̂) into `sums`; returns the group means
    /// (mean(γ·dz), mean(γ·dz·x̂)).
    #[inline(always)]
    fn group_sums(
        g: &Geometry,
        c0: usize,
        mean: f32,
        rstd: f32,
        (x, dy): (&[f32], &[f32]),
        gamma: &[f32],
        sums: &mut [[f64; 2]],
    ) -> (f64, f64) {
        let n = x.len() as f64;
        let rstd64 = rstd as f64;
        let (mut m1, mut m2) = (0.0f64, 0.0f64);
        for (((x, dy), sum), c) in x
            .chunks_exact(g.spatial)
            .zip(dy.chunks_exact(g.spatial))
            .zip(sums.iter_mut())
            .zip(c0..)
        {
            let sum_dy = sum2(dy, dy, |d, _| d) as f64;
            // Σ dy·x̂ = Σ dy·(x − μ)/σ, with x − μ formed before the product for accuracy.
            let sum_dy_xhat = sum2(x, dy, |x, d| (x - mean) * d) as f64 * rstd64;
            *sum = [sum_dy, sum_dy_xhat];
            m1 += gamma[c] as f64 * sum_dy;
            m2 += gamma[c] as f64 * sum_dy_xhat;
        }
        (m1 / n, m2 / n)
    }

    /// dx = σ⁻¹·(γ_c·dz − m1 − x̂·m2) = α_c·dz + β·x + δ: (α_c, β, δ) for a given γ_c.
    #[inline(always)]
    fn dx_coefficients(mean: f32, rstd: f32, m1: f64, m2: f64) -> impl Fn(f32) -> [f32; 3] {
        let (mean64, rstd64) = (mean as f64, rstd as f64);
        let beta = (-rstd64 * rstd64 * m2) as f32;
        let delta = (rstd64 * rstd64 * m2 * mean64 - rstd64 * m1) as f32;
        move |gamma| [rstd * gamma, beta, delta]
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn forward_group_avx512<const SILU: bool>(
        g: &Geometry,
        c0: usize,
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        gamma: &[f32],
        beta: &[f32],
    ) -> [f32; 2] {
        forward_group::<SILU, true>(g, c0, x, y, gamma, beta)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn backward_group_avx512<const SILU: bool>(
        g: &Geometry,
        c0: usize,
        stats: [f32; 2],
        blocks: (&[f32], &[f32], &mut [MaybeUninit<f32>]),
        affine: (&[f32], &[f32]),
        sums: &mut [[f64; 2]],
    ) {
        backward_group::<SILU, true>(g, c0, stats, blocks, affine, sums)
    }

    /// `y = (x − μ)/σ · γ_c + β_c` per (image, group), through SiLU if `silu`, and the
    /// (μ, 1/σ) of each.
    pub(super) fn forward(
        g: &Geometry,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        silu: bool,
    ) -> (Vec<f32>, Vec<[f32; 2]>) {
        #[cfg(test)]
        CALLS.hit(0);
        let n = g.group_len();
        let cpg = g.channels / g.groups;
        let fast = crate::flex_tensor::avx512();
        let mut stats = vec![[0.0f32; 2]; g.batch * g.groups];
        let y = crate::flex_tensor::written(x.len(), |y| {
            y.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .zip(stats.par_iter_mut())
                .enumerate()
                .for_each(|(index, ((y, x), stats))| {
                    let c0 = (index % g.groups) * cpg;
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the CPU has AVX-512F (checked above).
                        *stats = unsafe {
                            if silu {
                                forward_group_avx512::<true>(g, c0, x, y, gamma, beta)
                            } else {
                                forward_group_avx512::<false>(g, c0, x, y, gamma, beta)
                            }
                        };
                        return;
                    }
                    let _ = fast;
                    *stats = if silu {
                        forward_group::<true, false>(g, c0, x, y, gamma, beta)
                    } else {
                        forward_group::<false, false>(g, c0, x, y, gamma, beta)
                    };
                })
        });
        (y, stats)
    }

    /// (∂L/∂x, ∂L/∂γ, ∂L/∂β) from x, γ, ∂L/∂y and the forward statistics; with `Some(β)`,
    /// of `silu(GroupNorm(x))` (∂L/∂y is then the SiLU's output gradient).
    pub(super) fn backward(
        g: &Geometry,
        x: &[f32],
        (gamma, beta): (&[f32], Option<&[f32]>),
        dy: &[f32],
        stats: &[[f32; 2]],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        #[cfg(test)]
        CALLS.hit(1);
        assert!(dy.len() == x.len() && stats.len() == g.batch * g.groups);
        assert!(gamma.len() == g.channels && beta.is_none_or(|b| b.len() == g.channels));
        let n = g.group_len();
        let cpg = g.channels / g.groups;
        let fast = crate::flex_tensor::avx512();
        // Per (image, channel): Σ ∂L/∂y and Σ ∂L/∂y · x̂, summed over images afterwards.
        let mut sums = vec![[0.0f64; 2]; g.batch * g.channels];
        let dx = crate::flex_tensor::written(x.len(), |dx| {
            dx.par_chunks_mut(n)
                .zip(x.par_chunks(n).zip(dy.par_chunks(n)))
                .zip(sums.par_chunks_mut(cpg))
                .enumerate()
                .for_each(|(index, ((dx, (x, dy)), sums))| {
                    let c0 = (index % g.groups) * cpg;
                    let blocks = (x, dy, dx);
                    let stats = stats[index];
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the CPU has AVX-512F (checked above).
                        unsafe {
                            match beta {
                                Some(beta) => backward_group_avx512::<true>(
                                    g,
                                    c0,
                                    stats,
                                    blocks,
                                    (gamma, beta),
                                    sums,
                                ),
                                None => backward_group_avx512::<false>(
                                    g,
                                    c0,
                                    stats,
                                    blocks,
                                    (gamma, gamma),
                                    sums,
                                ),
                            }
                        };
                        return;
                    }
                    let _ = fast;
                    match beta {
                        Some(beta) => {
                            backward_group::<true, false>(g, c0, stats, blocks, (gamma, beta), sums)
                        }
                        None => backward_group::<false, false>(
                            g,
                            c0,
                            stats,
                            blocks,
                            (gamma, gamma),
                            sums,
                        ),
                    }
                })
        });
        let mut dgamma = vec![0.0f64; g.channels];
        let mut dbeta = vec![0.0f64; g.channels];
        for image in sums.chunks_exact(g.channels) {
            for ((dg, db), [sum_dy, sum_dy_xhat]) in dgamma.iter_mut().zip(&mut dbeta).zip(image) {
                *db += sum_dy;
                *dg += sum_dy_xhat;
            }
        }
        let narrow = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        (dx, narrow(dgamma), narrow(dbeta))
    }
}

#[cfg(all(test, feature = "flex", feature = "autodiff"))]
mod tests {
    use super::*;
    use crate::flex_tensor::relative_error;
    use burn::module::Param;
    use burn::nn::GroupNormConfig;
    use burn::tensor::{Device, Distribution};

    fn calls(which: usize) -> usize {
        kernels::CALLS.get(which)
    }

    /// A GroupNorm with random γ and β on `device`.
    fn norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
        let mut norm = GroupNormConfig::new(groups, channels)
            .with_epsilon(1e-5)
            .init(device);
        let random = || Tensor::<1>::random([channels], Distribution::Normal(0.5, 1.0), device);
        norm.gamma = Some(Param::from_tensor(random()));
        norm.beta = Some(Param::from_tensor(random()));
        norm
    }

    #[test]
    fn forward_matches_burn_group_norm() {
        let device = Device::flex();
        for (shape, groups) in [([3, 8, 5, 7], 4), ([2, 6, 1, 1], 3), ([4, 32, 14, 14], 32)] {
            let norm = norm(groups, shape[1], &device);
            // An offset mean and spread, as after a convolution.
            let x = Tensor::<4>::random(shape, Distribution::Normal(3.0, 2.0), &device);
            let before = calls(0);
            let ours = forward(&norm, x.clone());
            assert!(calls(0) > before, "the fused path did not run");
            let err = relative_error(ours, norm.forward(x));
            assert!(err < 1e-5, "{shape:?}/{groups}: relative error {err}");
        }
    }

    #[test]
    fn forward_silu_matches_burn_group_norm_then_silu() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let norm = norm(4, 8, &device);
            let x = Tensor::<4>::random([3, 8, 5, 7], Distribution::Normal(3.0, 2.0), &device);
            let before = calls(0);
            let ours = forward_silu(&norm, x.clone());
            assert!(calls(0) > before, "the fused path did not run");
            let reference = burn::tensor::activation::silu(norm.forward(x));
            let err = relative_error(ours, reference);
            assert!(err < 1e-5, "{device:?}: relative error {err}");
        }
    }

    #[test]
    fn gradients_match_burn_group_norm_on_autodiff_flex() {
        let device = Device::flex().autodiff();
        let cases = [([3, 8, 5, 7], 4, false), ([4, 16, 6, 6], 8, false)];
        // GroupNorm + SiLU as one node.
        let silu_cases = [([3, 8, 5, 7], 4, true), ([2, 32, 14, 14], 32, true)];
        for (shape, groups, silu) in cases.into_iter().chain(silu_cases) {
            let norm = norm(groups, shape[1], &device);
            let x = Tensor::<4>::random(shape, Distribution::Normal(3.0, 2.0), &device);
            let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |fast: bool| {
                let x = x.clone().require_grad();
                let y = match (fast, silu) {
                    (true, false) => forward(&norm, x.clone()),
                    (true, true) => forward_silu(&norm, x.clone()),
                    (false, false) => norm.forward(x.clone()),
                    (false, true) => burn::tensor::activation::silu(norm.forward(x.clone())),
                };
                let grads = (y * r.clone()).sum().backward();
                let gamma = norm.gamma.as_ref().unwrap().val();
                let beta = norm.beta.as_ref().unwrap().val();
                (
                    x.grad(&grads).expect("x grad"),
                    gamma.grad(&grads).expect("γ grad"),
                    beta.grad(&grads).expect("β grad"),
                )
            };
            let before = calls(1);
            let (dx, dg, db) = run(true);
            assert!(calls(1) > before, "the fused backward did not run");
            let (rx, rg, rb) = run(false);
            let case = format!("{shape:?}/{groups}, SiLU {silu}");
            assert!(relative_error(dx, rx) < 1e-4, "{case}: dx");
            assert!(relative_error(dg, rg) < 1e-5, "{case}: dγ");
            assert!(relative_error(db, rb) < 1e-5, "{case}: dβ");
        }
    }
}
