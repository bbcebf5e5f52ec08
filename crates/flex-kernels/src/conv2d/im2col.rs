//! Lowering a group of images to the im2col matrix and back (Chellapilla et al., 2006):
//! stride-1 kernel taps are one shifted copy each, the padding written as zeros.

use super::geometry::Geometry;

/// Builds the im2col matrix of a group of images (`x` holds exactly those): `[K, nb·P]`,
/// row `(c, i, j)` holding, for every image and output pixel, the input value under kernel
/// tap `(i, j)` (0 in the padding).
#[cfg_attr(
    all(target_arch = "wasm32", feature = "wasm-relaxed-simd"),
    allow(dead_code)
)]
pub(super) fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let n = x.len() / g.plane() * g.p();
    debug_assert_eq!(cols.len(), g.k() * n);
    for (r, row) in cols.chunks_exact_mut(n).enumerate() {
        im2col_row(g, x, r, row);
    }
}

/// Row `r` of [`im2col`]'s matrix (`row`: `nb·P` values).
pub(super) fn im2col_row(g: &Geometry, x: &[f32], r: usize, row: &mut [f32]) {
    let p = g.p();
    let [kh, kw] = g.kernel;
    let hw = g.height * g.width;
    let s = g.stride[1];
    let (c, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
    let (lo, hi, offset) = g.columns(j);
    let start = lo as isize * s as isize + offset;
    let tap = g.shifted_tap(i, j);
    for (bi, image_row) in row.chunks_exact_mut(p).enumerate() {
        let src = &x[(bi * g.channels_in + c) * hw..][..hw];
        if let Some((rows, lo, hi, shift)) = tap.clone() {
            copy_shifted(image_row, src, g.width_out, rows, lo, hi, shift);
            continue;
        }
        for (oy, dst) in image_row.chunks_exact_mut(g.width_out).enumerate() {
            let Some(iy) = g.row(oy, i) else {
                dst.fill(0.0);
                continue;
            };
            let src = &src[iy * g.width..][..g.width];
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            let start = start as usize;
            if s == 1 {
                dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
            } else {
                for (d, ix) in dst[lo..hi].iter_mut().zip((start..).step_by(s)) {
                    *d = src[ix];
                }
            }
        }
    }
}

/// Adds the columns of `dcols` (`[K, nb·P]`, laid out as [`im2col`]'s output) back onto
/// the input pixels they were read from; `dx` holds the group's `[nb, C_in, H, W]`.
#[cfg(feature = "autodiff")]
pub(super) fn col2im(g: &Geometry, dcols: &mut [f32], dx: &mut [f32]) {
    let p = g.p();
    let n = dx.len() / g.plane() * p;
    let [kh, kw] = g.kernel;
    let hw = g.height * g.width;
    let s = g.stride[1];
    dx.fill(0.0);
    for (plane_index, plane) in dx.chunks_exact_mut(hw).enumerate() {
        let (bi, c) = (plane_index / g.channels_in, plane_index % g.channels_in);
        for i in 0..kh {
            for j in 0..kw {
                let (lo, hi, offset) = g.columns(j);
                let start = (lo as isize * s as isize + offset) as usize;
                let r = (c * kh + i) * kw + j;
                if let Some((rows, lo, hi, shift)) = g.shifted_tap(i, j) {
                    let src = &mut dcols[r * n + bi * p..][..p];
                    add_shifted(plane, src, g.width_out, rows, lo, hi, shift);
                    continue;
                }
                let src = &dcols[r * n + bi * p..][..p];
                for (oy, src) in src.chunks_exact(g.width_out).enumerate() {
                    let Some(iy) = g.row(oy, i) else { continue };
                    let dst = &mut plane[iy * g.width..][..g.width];
                    if s == 1 {
                        for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (ix, v) in (start..).step_by(s).zip(&src[lo..hi]) {
                            dst[ix] += v;
                        }
                    }
                }
            }
        }
    }
}

/// One tap of [`Geometry::shifted_tap`]: `dst[t] = src[t + shift]` over `rows`, columns
/// `lo..hi`; 0 elsewhere.
fn copy_shifted(
    dst: &mut [f32],
    src: &[f32],
    width: usize,
    rows: std::ops::Range<usize>,
    lo: usize,
    hi: usize,
    shift: isize,
) {
    if rows.is_empty() || lo == hi {
        dst.fill(0.0);
        return;
    }
    let (start, end) = (rows.start * width + lo, (rows.end - 1) * width + hi);
    dst[..start].fill(0.0);
    dst[end..].fill(0.0);
    let from = (start as isize + shift) as usize;
    dst[start..end].copy_from_slice(&src[from..from + (end - start)]);
    // The contiguous copy ran across row ends; clear the columns outside lo..hi (one or
    // two per row for a 3×3 kernel: plain stores, not memset calls).
    clear_border_columns(
        &mut dst[rows.start * width..rows.end * width],
        width,
        lo,
        hi,
    );
}

/// Zeroes columns `..lo` and `hi..` of every row of a row-major block.
#[inline(always)]
fn clear_border_columns(block: &mut [f32], width: usize, lo: usize, hi: usize) {
    // LLVM turns zeroing loops into memset calls, which cost more than the one or two
    // stores a row needs; spell the common widths out.
    let clear = |cells: &mut [f32]| match cells.len() {
        0 => {}
        1 => cells[0] = 0.0,
        2 => cells.copy_from_slice(&[0.0; 2]),
        _ => cells.fill(0.0),
    };
    for row in block.chunks_exact_mut(width) {
        clear(&mut row[..lo]);
        clear(&mut row[hi..]);
    }
}

/// The adjoint of [`copy_shifted`]: `dst[t + shift] += src[t]` over `rows`, columns
/// `lo..hi` (`src` is scratch: its other columns are cleared first).
#[cfg(feature = "autodiff")]
fn add_shifted(
    dst: &mut [f32],
    src: &mut [f32],
    width: usize,
    rows: std::ops::Range<usize>,
    lo: usize,
    hi: usize,
    shift: isize,
) {
    if rows.is_empty() || lo == hi {
        return;
    }
    clear_border_columns(
        &mut src[rows.start * width..rows.end * width],
        width,
        lo,
        hi,
    );
    let (start, end) = (rows.start * width + lo, (rows.end - 1) * width + hi);
    let to = (start as isize + shift) as usize;
    for (d, v) in dst[to..to + (end - start)].iter_mut().zip(&src[start..end]) {
        *d += v;
    }
}
