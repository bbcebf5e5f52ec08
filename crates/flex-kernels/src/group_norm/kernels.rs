//! The per-group loops on f32 slices laid out as `[batch, channels, spatial…]`.

use crate::silu::kernels::sigmoid;
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
#[cfg(feature = "autodiff")]
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
#[cfg(feature = "autodiff")]
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
#[cfg(feature = "autodiff")]
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
#[cfg(feature = "autodiff")]
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
    crate::fast_path::hit(crate::Kernel::GroupNorm, crate::Pass::Forward);
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
#[cfg(feature = "autodiff")]
pub(super) fn backward(
    g: &Geometry,
    x: &[f32],
    (gamma, beta): (&[f32], Option<&[f32]>),
    dy: &[f32],
    stats: &[[f32; 2]],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    crate::fast_path::hit(crate::Kernel::GroupNorm, crate::Pass::Backward);
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
                    None => {
                        backward_group::<false, false>(g, c0, stats, blocks, (gamma, gamma), sums)
                    }
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
