//! The loops on f32 slices, in parallel over blocks (the sum) or image channels (FiLM).

use crate::silu::kernels::sigmoid;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per parallel task of the sum.
const BLOCK: usize = 1 << 14;

pub(super) fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Elementwise, crate::Pass::Forward);
    assert_eq!(a.len(), b.len());
    crate::flex_tensor::written(a.len(), |y| {
        y.par_chunks_mut(BLOCK)
            .zip(a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK)))
            .for_each(|(y, (a, b))| {
                for (y, (a, b)) in y.iter_mut().zip(a.iter().zip(b)) {
                    y.write(a + b);
                }
            });
    })
}

/// Per image, the `a` part then the `b` part (`n` images in each).
pub(super) fn cat(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Elementwise, crate::Pass::Forward);
    let (la, lb) = (a.len() / n, b.len() / n);
    crate::flex_tensor::written(a.len() + b.len(), |y| {
        y.par_chunks_mut(la + lb)
            .zip(a.par_chunks(la).zip(b.par_chunks(lb)))
            .for_each(|(y, (a, b))| {
                // Two slice copies: they vectorise, a chained element loop does not.
                let (ya, yb) = y.split_at_mut(la);
                ya.write_copy_of_slice(a);
                yb.write_copy_of_slice(b);
            });
    })
}

/// The inverse of [`cat`]: the first `la` values of each of the `n` images, and the rest.
#[cfg(feature = "autodiff")]
pub(super) fn split(y: &[f32], n: usize, la: usize) -> (Vec<f32>, Vec<f32>) {
    crate::fast_path::hit(crate::Kernel::Elementwise, crate::Pass::Backward);
    let lb = y.len() / n - la;
    let a = crate::flex_tensor::written(n * la, |a| {
        a.par_chunks_mut(la.max(1))
            .zip(y.par_chunks(la + lb))
            .for_each(|(a, y)| {
                a.write_copy_of_slice(&y[..la]);
            });
    });
    let b = crate::flex_tensor::written(n * lb, |b| {
        b.par_chunks_mut(lb.max(1))
            .zip(y.par_chunks(la + lb))
            .for_each(|(b, y)| {
                b.write_copy_of_slice(&y[la..]);
            });
    });
    (a, b)
}

/// `x·(1 + s) + t` per plane, then SiLU if `silu`; `scale` and `shift` hold one value per
/// plane of `x`.
pub(super) fn film(x: &[f32], scale: &[f32], shift: &[f32], silu: bool) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Elementwise, crate::Pass::Forward);
    assert!(!scale.is_empty() && scale.len() == shift.len());
    let plane = x.len() / scale.len();
    assert_eq!(plane * scale.len(), x.len());
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(x.len(), |y| {
        y.par_chunks_mut(plane)
            .zip(x.par_chunks(plane))
            .zip(scale.par_iter().zip(shift))
            .for_each(|((y, x), (&s, &t))| {
                let m = 1.0 + s;
                #[cfg(target_arch = "x86_64")]
                if fast && silu {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { film_silu_avx512(x, m, t, y) };
                }
                let _ = fast;
                if silu {
                    film_silu_loop::<false>(x, m, t, y);
                } else {
                    for (y, x) in y.iter_mut().zip(x) {
                        y.write(x * m + t);
                    }
                }
            });
    })
}

#[inline(always)]
fn film_silu_loop<const FMA: bool>(x: &[f32], m: f32, t: f32, y: &mut [MaybeUninit<f32>]) {
    for (y, x) in y.iter_mut().zip(x) {
        let a = x * m + t;
        y.write(a * sigmoid::<FMA>(a));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn film_silu_avx512(x: &[f32], m: f32, t: f32, y: &mut [MaybeUninit<f32>]) {
    film_silu_loop::<true>(x, m, t, y)
}

/// One plane's backward: writes ∂L/∂x (if asked) and returns (Σ g·x, Σ g) for the scale and
/// shift, where g is ∂L/∂y, or with `SILU` ∂L/∂y · SiLU′(x·m + t).
#[inline(always)]
#[cfg(feature = "autodiff")]
fn film_backward_loop<const SILU: bool, const FMA: bool>(
    x: &[f32],
    g: &[f32],
    m: f32,
    t: f32,
    mut dx: Option<&mut [MaybeUninit<f32>]>,
) -> (f32, f32) {
    let grad = |x: f32, g: f32| {
        if SILU {
            let a = x * m + t;
            let s = sigmoid::<FMA>(a);
            g * s * (1.0 + a * (1.0 - s))
        } else {
            g
        }
    };
    // 16 running sums each over whole 16-element chunks (fixed-size, so the loops
    // vectorise), then the tail.
    let (mut gx, mut gs) = ([0.0f32; 16], [0.0f32; 16]);
    let whole = x.len() / 16 * 16;
    for start in (0..whole).step_by(16) {
        let xs: &[f32; 16] = x[start..start + 16].try_into().expect("16");
        let gr: &[f32; 16] = g[start..start + 16].try_into().expect("16");
        let mut d = [0.0f32; 16];
        for i in 0..16 {
            d[i] = grad(xs[i], gr[i]);
            gx[i] += d[i] * xs[i];
            gs[i] += d[i];
        }
        if let Some(dx) = dx.as_deref_mut() {
            for (o, d) in dx[start..start + 16].iter_mut().zip(d) {
                o.write(d * m);
            }
        }
    }
    let (mut tail_x, mut tail_s) = (0.0f64, 0.0f64);
    for i in whole..x.len() {
        let d = grad(x[i], g[i]);
        tail_x += (d * x[i]) as f64;
        tail_s += d as f64;
        if let Some(dx) = dx.as_deref_mut() {
            dx[i].write(d * m);
        }
    }
    let total = |l: [f32; 16], tail: f64| (l.iter().map(|&v| v as f64).sum::<f64>() + tail) as f32;
    (total(gx, tail_x), total(gs, tail_s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[cfg(feature = "autodiff")]
fn film_backward_avx512<const SILU: bool>(
    x: &[f32],
    g: &[f32],
    m: f32,
    t: f32,
    dx: Option<&mut [MaybeUninit<f32>]>,
) -> (f32, f32) {
    film_backward_loop::<SILU, true>(x, g, m, t, dx)
}

/// (∂L/∂x if `need_x`, ∂L/∂scale, ∂L/∂shift) of [`film`] given ∂L/∂y; `shift` is given when
/// the forward applied SiLU.
#[cfg(feature = "autodiff")]
pub(super) fn film_backward(
    x: &[f32],
    scale: &[f32],
    shift: Option<&[f32]>,
    grad: &[f32],
    need_x: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    crate::fast_path::hit(crate::Kernel::Elementwise, crate::Pass::Backward);
    let plane = x.len() / scale.len();
    assert_eq!(grad.len(), x.len());
    assert!(shift.is_none_or(|t| t.len() == scale.len()));
    let fast = crate::flex_tensor::avx512();
    let one = |x: &[f32], g: &[f32], index: usize, dx: Option<&mut [MaybeUninit<f32>]>| {
        let m = 1.0 + scale[index];
        let t = shift.map(|t| t[index]);
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe {
                match t {
                    Some(t) => film_backward_avx512::<true>(x, g, m, t, dx),
                    None => film_backward_avx512::<false>(x, g, m, 0.0, dx),
                }
            };
        }
        let _ = fast;
        match t {
            Some(t) => film_backward_loop::<true, false>(x, g, m, t, dx),
            None => film_backward_loop::<false, false>(x, g, m, 0.0, dx),
        }
    };
    let planes = x.par_chunks(plane).zip(grad.par_chunks(plane)).enumerate();
    let mut sums = Vec::with_capacity(scale.len());
    let dx = if need_x {
        let dx = crate::flex_tensor::written(x.len(), |dx| {
            planes
                .zip(dx.par_chunks_mut(plane))
                .map(|((index, (x, g)), dx)| one(x, g, index, Some(dx)))
                .collect_into_vec(&mut sums);
        });
        Some(dx)
    } else {
        planes
            .map(|(index, (x, g))| one(x, g, index, None))
            .collect_into_vec(&mut sums);
        None
    };
    let (dscale, dshift) = sums.into_iter().unzip();
    (dx, dscale, dshift)
}
