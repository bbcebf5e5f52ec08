//! The per-(image, head) loops on slices laid out `[batch, channels, pixels]`.

use crate::silu::kernels::{exp, madd};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `out[l] = Σ_r coef(r)·rows[r·stride + l]`: sums of rows, 64 lanes at a time in four
/// vector accumulators (independent chains; a row-by-row `out += a·row` would load and
/// store `out` for every row), then 16, then single lanes.
#[inline(always)]
fn lincomb<const FMA: bool>(
    out: &mut [f32],
    rows: &[f32],
    stride: usize,
    coef: impl Fn(usize) -> f32,
) {
    let count = rows.len() / stride;
    let mut start = 0;
    while start + 64 <= out.len() {
        let mut acc = [[0.0f32; 16]; 4];
        for r in 0..count {
            let a = coef(r);
            let x = &rows[r * stride + start..][..64];
            for (acc, x) in acc.iter_mut().zip(x.chunks_exact(16)) {
                for l in 0..16 {
                    acc[l] = madd::<FMA>(a, x[l], acc[l]);
                }
            }
        }
        for (o, acc) in out[start..start + 64].chunks_exact_mut(16).zip(&acc) {
            o.copy_from_slice(acc);
        }
        start += 64;
    }
    while start + 16 <= out.len() {
        let mut acc = [0.0f32; 16];
        for r in 0..count {
            let a = coef(r);
            let x = &rows[r * stride + start..][..16];
            for l in 0..16 {
                acc[l] = madd::<FMA>(a, x[l], acc[l]);
            }
        }
        out[start..start + 16].copy_from_slice(&acc);
        start += 16;
    }
    for (l, o) in out.iter_mut().enumerate().skip(start) {
        *o = (0..count).fold(0.0, |s, r| madd::<FMA>(coef(r), rows[r * stride + l], s));
    }
}

/// Floats of scratch [`head`] needs for `n` pixels and head size `d`.
fn scratch_len(n: usize, d: usize) -> usize {
    let np = n.next_multiple_of(16);
    (d + n + 3) * np
}

/// `dst` as rows of `np` floats: each row of `src` (`n` floats), then zeros.
fn pad_rows(dst: &mut [f32], src: &[f32], n: usize, np: usize) {
    for (dst, src) in dst.chunks_exact_mut(np).zip(src.chunks_exact(n)) {
        dst[..n].copy_from_slice(src);
        dst[n..].fill(0.0);
    }
}

/// The attention weights of one head, transposed: `p[j, i]` (rows of `np` floats) is the
/// softmax over j of `sᵀ[j, i] = Σ_e k[e, j]·q[e, i] / √d`, less its maximum for range.
/// `qp` is Q with rows padded to `np`; `max` and `sum` are `np` floats of scratch.
#[inline(always)]
fn probabilities<const FMA: bool>(
    (qp, k): (&[f32], &[f32]),
    scale: f32,
    p: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
) {
    let np = max.len();
    let n = p.len() / np;
    for (j, row) in p.chunks_exact_mut(np).enumerate() {
        lincomb::<FMA>(row, qp, np, |e| k[e * n + j] * scale);
    }
    max.fill(f32::NEG_INFINITY);
    for row in p.chunks_exact(np) {
        for (m, &s) in max.iter_mut().zip(row) {
            *m = m.max(s);
        }
    }
    sum.fill(0.0);
    for row in p.chunks_exact_mut(np) {
        for ((s, &m), total) in row.iter_mut().zip(&*max).zip(sum.iter_mut()) {
            *s = exp::<FMA>(*s - m);
            *total += *s;
        }
    }
    for total in sum.iter_mut() {
        *total = 1.0 / *total;
    }
    for row in p.chunks_exact_mut(np) {
        for (s, &inv) in row.iter_mut().zip(&*sum) {
            *s *= inv;
        }
    }
}

/// One head: `q`, `k`, `v` are `[d, n]`, `out` is `[d, n]`, `scratch` holds
/// [`scratch_len`] floats. Every loop runs along the query pixels i (contiguous in q and in
/// the output), in rows padded to whole vectors (`np`), so it vectorises without horizontal
/// sums or scalar tails: the weights are kept transposed, `pᵀ[j, i]`.
#[inline(always)]
fn head<const FMA: bool>(
    (q, k, v): (&[f32], &[f32], &[f32]),
    n: usize,
    scale: f32,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    let np = n.next_multiple_of(16);
    let d = q.len() / n;
    let (qp, rest) = scratch.split_at_mut(d * np);
    let (p, rest) = rest.split_at_mut(n * np);
    let (max, rest) = rest.split_at_mut(np);
    let (sum, acc) = rest.split_at_mut(np);
    pad_rows(qp, q, n, np);
    probabilities::<FMA>((qp, k), scale, p, max, sum);
    // out[e, i] = Σ_j v[e, j]·p[j, i]
    for (v, out) in v.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        lincomb::<FMA>(acc, p, np, |j| v[j]);
        for (o, &a) in out.iter_mut().zip(&*acc) {
            o.write(a);
        }
    }
}

/// The three gradients of one head, as one argument.
#[cfg(feature = "autodiff")]
type HeadGradients<'a> = (
    &'a mut [MaybeUninit<f32>],
    &'a mut [MaybeUninit<f32>],
    &'a mut [MaybeUninit<f32>],
);

/// Floats of scratch [`head_backward`] needs.
#[cfg(feature = "autodiff")]
fn backward_scratch_len(n: usize, d: usize) -> usize {
    let np = n.next_multiple_of(16);
    (2 * d + 2 * n + 3) * np + 2 * n * d + 2 * d
}

/// Gradients of one head: from `q`, `k`, `v` and `dout` = ∂L/∂out (all `[d, n]`), writes
/// ∂L/∂q, ∂L/∂k and ∂L/∂v (`[d, n]` each). P is recomputed (transposed, `pᵀ[j, i]`, rows
/// padded to whole vectors as in [`head`]).
#[cfg(feature = "autodiff")]
#[inline(always)]
fn head_backward<const FMA: bool>(
    (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]),
    n: usize,
    scale: f32,
    scratch: &mut [f32],
    (dq, dk, dv): HeadGradients,
) {
    let np = n.next_multiple_of(16);
    let d = q.len() / n;
    let (qp, rest) = scratch.split_at_mut(d * np);
    let (dop, rest) = rest.split_at_mut(d * np);
    let (p, rest) = rest.split_at_mut(n * np);
    let (ds, rest) = rest.split_at_mut(n * np);
    let (max, rest) = rest.split_at_mut(np);
    let (sum, rest) = rest.split_at_mut(np);
    let (acc, rest) = rest.split_at_mut(np);
    // Q and ∂L/∂out also transposed (`[n, d]`), for the sums over i.
    let (qt, rest) = rest.split_at_mut(n * d);
    let (dout_t, rest) = rest.split_at_mut(n * d);
    let (dk_col, dv_col) = rest.split_at_mut(d);
    pad_rows(qp, q, n, np);
    pad_rows(dop, dout, n, np);
    for (e, (q, dout)) in q.chunks_exact(n).zip(dout.chunks_exact(n)).enumerate() {
        for (i, (&q, &g)) in q.iter().zip(dout).enumerate() {
            qt[i * d + e] = q;
            dout_t[i * d + e] = g;
        }
    }
    probabilities::<FMA>((qp, k), scale, p, max, sum);
    // ∂L/∂pᵀ[j, i] = Σ_e v[e, j]·dout[e, i]
    for (j, row) in ds.chunks_exact_mut(np).enumerate() {
        lincomb::<FMA>(row, dop, np, |e| v[e * n + j]);
    }
    // ∂L/∂sᵀ[j, i] = p[j, i]·(∂L/∂p[j, i] − Σ_j' p[j', i]·∂L/∂p[j', i])
    let weighted = max;
    weighted.fill(0.0);
    for (prow, dprow) in p.chunks_exact(np).zip(ds.chunks_exact(np)) {
        for ((w, &p), &dp) in weighted.iter_mut().zip(prow).zip(dprow) {
            *w = madd::<FMA>(p, dp, *w);
        }
    }
    for (prow, dsrow) in p.chunks_exact(np).zip(ds.chunks_exact_mut(np)) {
        for ((ds, &p), &w) in dsrow.iter_mut().zip(prow).zip(&*weighted) {
            *ds = p * (*ds - w);
        }
    }
    // ∂L/∂q[e, i] = Σ_j k[e, j]·∂L/∂sᵀ[j, i] / √d
    for (k, dq) in k.chunks_exact(n).zip(dq.chunks_exact_mut(n)) {
        lincomb::<FMA>(acc, ds, np, |j| k[j] * scale);
        for (dq, &a) in dq.iter_mut().zip(&*acc) {
            dq.write(a);
        }
    }
    // Column j of ∂L/∂k and ∂L/∂v as sums over i of columns of Q and ∂L/∂out:
    // ∂L/∂k[·, j] = Σ_i q[·, i]·∂L/∂sᵀ[j, i] / √d, ∂L/∂v[·, j] = Σ_i dout[·, i]·p[j, i].
    for (j, (dsrow, prow)) in ds.chunks_exact(np).zip(p.chunks_exact(np)).enumerate() {
        lincomb::<FMA>(dk_col, qt, d, |i| dsrow[i] * scale);
        lincomb::<FMA>(dv_col, dout_t, d, |i| prow[i]);
        for e in 0..d {
            dk[e * n + j].write(dk_col[e]);
            dv[e * n + j].write(dv_col[e]);
        }
    }
}

#[cfg(all(feature = "autodiff", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
fn head_backward_avx512(
    inputs: (&[f32], &[f32], &[f32], &[f32]),
    n: usize,
    scale: f32,
    scratch: &mut [f32],
    grads: HeadGradients,
) {
    head_backward::<true>(inputs, n, scale, scratch, grads)
}

/// ∂L/∂qkv (`[b, 3c, n]`) from `qkv` and `dout` = ∂L/∂out (`[b, c, n]`).
#[cfg(feature = "autodiff")]
pub(super) fn attention_backward(
    qkv: &[f32],
    dout: &[f32],
    [b, c, n]: [usize; 3],
    heads: usize,
) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::SelfAttention, crate::Pass::Backward);
    assert!(qkv.len() == b * 3 * c * n && dout.len() == b * c * n);
    let d = c / heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(b * 3 * c * n, |dqkv| {
        dqkv.par_chunks_mut(3 * c * n)
            .zip(qkv.par_chunks(3 * c * n).zip(dout.par_chunks(c * n)))
            .for_each_init(Vec::new, |scratch, (dqkv, (qkv, dout))| {
                scratch.resize(backward_scratch_len(n, d), 0.0);
                let (dq, rest) = dqkv.split_at_mut(c * n);
                let (dk, dv) = rest.split_at_mut(c * n);
                let size = d * n;
                let grads = dq
                    .chunks_exact_mut(size)
                    .zip(dk.chunks_exact_mut(size))
                    .zip(dv.chunks_exact_mut(size));
                for (h, ((dq, dk), dv)) in grads.enumerate() {
                    let at = |part: usize| &qkv[(part * c + h * d) * n..][..d * n];
                    let inputs = (at(0), at(1), at(2), &dout[h * d * n..][..d * n]);
                    let grads = (dq, dk, dv);
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the CPU has AVX-512F (checked above).
                        unsafe { head_backward_avx512(inputs, n, scale, scratch, grads) };
                        continue;
                    }
                    let _ = fast;
                    head_backward::<false>(inputs, n, scale, scratch, grads)
                }
            })
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn head_avx512(
    qkv: (&[f32], &[f32], &[f32]),
    n: usize,
    scale: f32,
    scratch: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    head::<true>(qkv, n, scale, scratch, out)
}

/// Attention of every image and head of `qkv` (`[b, 3c, n]` as `[b, c, n]` = `dims`);
/// returns `[b, c, n]`.
pub(super) fn attention(qkv: &[f32], [b, c, n]: [usize; 3], heads: usize) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::SelfAttention, crate::Pass::Forward);
    assert_eq!(qkv.len(), b * 3 * c * n);
    let d = c / heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let fast = crate::flex_tensor::avx512();
    crate::flex_tensor::written(b * c * n, |y| {
        y.par_chunks_mut(d * n)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (task, out)| {
                let (image, h) = (task / heads, task % heads);
                let at = |part: usize| &qkv[((image * 3 + part) * c + h * d) * n..][..d * n];
                let qkv = (at(0), at(1), at(2));
                scratch.resize(scratch_len(n, d), 0.0);
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { head_avx512(qkv, n, scale, scratch, out) };
                }
                let _ = fast;
                head::<false>(qkv, n, scale, scratch, out)
            })
    })
}
