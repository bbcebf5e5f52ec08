//! Direct stride-1 convolution on AVX-512: no im2col matrix and no packed copy of the input.
//!
//! The images lie on the zero-padded grid of `super::grid` (one lane per input channel, the
//! im2col row of `(c, i, j)` being lane `c` read at a constant offset), and the product
//! `Y[m, q] = b[m] + Σ_{c,i,j} W[m, c, i, j] · X_pad[c, q + i·W_p + j]` streams it in place.
//! The grid's extra positions cost 7 % of the work at 28×28 and 3×3, 13 % at 14×14 — less than
//! the 9× copy of im2col plus the gemm crate's packing of that copy.
//!
//! The micro-kernel holds an `MR × 16·NV` block of Y in 24 registers: per tap it loads `NV`
//! vectors of the shifted lane and broadcasts `MR` weights from a block of the weight packed as
//! `[c][tap][MR]`. Output vectors go straight to the NCHW output with compress-stores that keep
//! only the lanes of real pixels (consecutive in the output, image by image).

use super::geometry::Geometry;
use super::grid::Grid;
#[cfg(feature = "autodiff")]
use super::scratch::aligned;
use super::scratch::{sized, Scratch, Shared};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Vectors of 16 pixels per micro-kernel block.
const NV: usize = 3;
/// Output channels per micro-kernel block.
const MR: usize = 8;
/// Grid positions per micro-kernel block.
const TILE: usize = 16 * NV;
/// Fewest grid positions per group of images in the forward pass: smaller images are stacked.
pub(super) const FORWARD_POSITIONS: usize = 512;
/// The same for the weight gradient, whose register sums are reduced once per group and
/// channel block (a group of 2,048 positions of 128 channels still fits in L2).
#[cfg(feature = "autodiff")]
pub(super) const WEIGHT_GRADIENT_POSITIONS: usize = 2048;

/// The lanes of one 16-position vector that belong to one image: `mask` selects them and the
/// first lands at output offset `base` (channel 0 of the group's output; channel `m` adds
/// `m · P`), the others right after it.
#[derive(Clone, Copy, Debug)]
struct Segment {
    image: usize,
    mask: u16,
    base: usize,
}

/// Where a convolution's grid and buffers lie; the same for every group of images.
pub(super) struct Plan {
    /// The grid and the groups of images.
    grid: Grid,
    /// Floats per channel lane of the padded buffer.
    lane: usize,
    /// Offset of each kernel tap `(i, j)` in the padded buffer, row-major.
    offsets: Vec<usize>,
    /// Segments of every vector of a full group's grid: those of vector `v` are
    /// `segments[starts[v]..starts[v + 1]]`.
    segments: Vec<Segment>,
    starts: Vec<usize>,
}

impl Plan {
    /// The plan for a stride-1, dilation-1 convolution on a CPU with AVX-512F and VL; `None`
    /// otherwise.
    ///
    /// Images are grouped for at least `min_positions` grid positions per group, in a number
    /// of groups that the threads share evenly.
    pub(super) fn new(g: &Geometry, min_positions: usize) -> Option<Self> {
        let avx512 = crate::flex_tensor::avx512() && std::is_x86_feature_detected!("avx512vl");
        if !avx512 {
            return None;
        }
        let grid = Grid::new(g, min_positions)?;
        let [kh, kw] = g.kernel;
        let tiles = grid.positions(grid.group).div_ceil(TILE);
        let lane = (tiles * TILE + (kh - 1) * grid.width + kw - 1).next_multiple_of(16);
        let mut plan = Self {
            grid,
            lane,
            offsets: grid.offsets(),
            segments: Vec::new(),
            starts: vec![0],
        };
        plan.segment(tiles * NV);
        Some(plan)
    }

    /// Whether this kernel beats im2col + gemm on the geometry: for k×k kernels (k > 1; for
    /// 1×1 im2col is a plain copy) with little grid waste (≥ 90 % real pixels: 16×16 and larger
    /// images) or few output channels (≤ 64, where gemm's products are too thin to run at full
    /// speed). The measurements behind the thresholds: `docs/kernels.md`.
    pub(super) fn pays_off(&self) -> bool {
        let g = &self.grid.g;
        self.offsets.len() > 1 && (g.channels_out <= 64 || self.grid.real_fraction() >= 0.9)
    }

    /// Fills the segments of the first `vectors` vectors of a full group's grid.
    fn segment(&mut self, vectors: usize) {
        let (g, p) = (&self.grid.g, self.grid.g.p());
        for v in 0..vectors {
            for lane in 0..16 {
                let q = v * 16 + lane;
                let (row, col) = (q / self.grid.width, q % self.grid.width);
                let (image, oy) = (row / self.grid.image_rows, row % self.grid.image_rows);
                if image >= self.grid.group || oy >= g.height_out || col >= g.width_out {
                    continue;
                }
                let base = image * g.channels_out * p + oy * g.width_out + col;
                let own = self.segments.len() > self.starts[v];
                match self.segments.last_mut() {
                    Some(s) if own && s.image == image => s.mask |= 1 << lane,
                    _ => self.segments.push(Segment {
                        image,
                        mask: 1 << lane,
                        base,
                    }),
                }
            }
            self.starts.push(self.segments.len());
        }
    }

    /// Grid positions of a group of `n` images, rounded up to whole tiles.
    fn tiles(&self, n: usize) -> usize {
        self.grid.positions(n).div_ceil(TILE)
    }

    /// Copies a group's images (`x`: `[n, C_in, H, W]`) into the zero-padded buffer.
    fn pad(&self, x: &[f32], buffer: &mut [f32]) {
        // SAFETY: Plan::new checked AVX-512F; `Grid::pad` hands over ranges of `buffer`
        // and rows of `x`.
        self.grid
            .pad(x, buffer, self.lane, |dst, src| unsafe { copy(dst, src) });
    }
}

/// `dst = src` (or zeros), with 16-lane and masked stores: the rows are a few dozen floats, too
/// short for `memcpy`/`memset` calls to pay off.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn copy(dst: &mut [f32], src: Option<&[f32]>) {
    let len = dst.len();
    assert!(src.is_none_or(|s| s.len() == len));
    let mut i = 0;
    while i < len {
        let mask: __mmask16 = if len - i >= 16 {
            u16::MAX
        } else {
            (1u16 << (len - i)) - 1
        };
        let value = match src {
            Some(src) => _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i)),
            None => _mm512_setzero_ps(),
        };
        _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), mask, value);
        i += 16;
    }
}

impl Plan {
    /// Lays a group's ∂L/∂y (`dy`: `[n, C_out, H_out, W_out]`) out on the grid, one lane per
    /// output channel, zero at the dropped positions and past the group's last tile.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[cfg(feature = "autodiff")]
    unsafe fn expand(&self, n: usize, dy: &[f32], dyg: &mut [f32]) {
        let p = self.grid.g.p();
        let vectors = self.tiles(n) * NV;
        assert!(dy.len() >= n * self.grid.g.channels_out * p && vectors * 16 <= self.lane);
        for (m, lane) in dyg.chunks_exact_mut(self.lane).enumerate() {
            let src = dy.as_ptr().add(m * p);
            for (v, dst) in lane[..vectors * 16].chunks_exact_mut(16).enumerate() {
                let mut value = _mm512_setzero_ps();
                for s in &self.segments[self.starts[v]..self.starts[v + 1]] {
                    if s.image < n {
                        // SAFETY: the segment's lanes are consecutive pixels of image < n.
                        let part = _mm512_maskz_expandloadu_ps(s.mask, src.add(s.base).cast());
                        value = _mm512_add_ps(value, part);
                    }
                }
                _mm512_storeu_ps(dst.as_mut_ptr(), value);
            }
            lane[vectors * 16..].fill(0.0);
        }
    }
}

/// The weight `[C_out, C_in, k_h, k_w]` cut into blocks of up to [`MR`] output channels, each
/// laid out `[c][tap][rows]`: `(first channel, rows, offset of the block)`.
fn pack(g: &Geometry, weight: &[f32]) -> (Vec<f32>, Vec<(usize, usize, usize)>) {
    let taps = g.kernel[0] * g.kernel[1];
    let k = g.channels_in * taps;
    let mut blocks = Vec::new();
    let mut m0 = 0;
    while m0 < g.channels_out {
        let left = g.channels_out - m0;
        let rows = if left >= MR { MR } else { 1 << left.ilog2() };
        blocks.push((m0, rows, m0 * k));
        m0 += rows;
    }
    // The blocks tile all C_out · K values.
    let packed = crate::flex_tensor::written(g.channels_out * k, |packed| {
        for &(m0, rows, at) in &blocks {
            for (t, dst) in packed[at..at + rows * k].chunks_exact_mut(rows).enumerate() {
                for (r, d) in dst.iter_mut().enumerate() {
                    d.write(weight[(m0 + r) * k + t]);
                }
            }
        }
    });
    (packed, blocks)
}

/// The convolution `[B, C_out, H_out, W_out]` (see [`super::forward::forward`]).
pub(super) fn forward(plan: &Plan, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    crate::fast_path::hit(crate::Kernel::Conv2dDirect, crate::Pass::Forward);
    let g = &plan.grid.g;
    let (packed, blocks) = pack(g, weight);
    let bias = bias.map_or_else(|| vec![0.0; g.channels_out], <[f32]>::to_vec);
    let plane = g.channels_in * g.height * g.width;
    let out_plane = g.channels_out * g.p();
    let groups = g.batch.div_ceil(plan.grid.group);
    crate::flex_tensor::written(g.batch * out_plane, |y| {
        let out = Shared(y.as_mut_ptr().cast::<f32>());
        // One group's tiles `range`, its padded buffer `xp`, output from image `b0`.
        let run = |b0: usize, xp: &[f32], range: std::ops::Range<usize>| {
            let n = plan.grid.group.min(g.batch - b0);
            // SAFETY: the group's output starts at image b0 of y; the segments of group-local
            // images < n address only its own [n, C_out, P] block, and tiles of different
            // tasks hold different positions, so no element is written twice.
            unsafe {
                let out = out.get().add(b0 * out_plane);
                tiles(plan, n, xp, &packed, &blocks, &bias, out, range);
            }
        };
        if groups >= rayon::current_num_threads() {
            let chunks = x.par_chunks(plan.grid.group * plane).enumerate();
            chunks.for_each_init(Scratch::take, |buffer, (index, x)| {
                let n = x.len() / plane;
                let xp = sized(&mut buffer.0[0], g.channels_in * plan.lane);
                plan.pad(x, xp);
                run(index * plan.grid.group, xp, 0..plan.tiles(n));
            });
        } else {
            // Fewer groups than threads: split each group's tiles between the threads.
            let mut buffer = Scratch::take();
            let xp = sized(&mut buffer.0[0], g.channels_in * plan.lane);
            let parts = 4 * rayon::current_num_threads();
            for (index, x) in x.chunks(plan.grid.group * plane).enumerate() {
                plan.pad(x, xp);
                let count = plan.tiles(x.len() / plane);
                let xp = &*xp;
                (0..parts).into_par_iter().for_each(|part| {
                    let range = count * part / parts..count * (part + 1) / parts;
                    run(index * plan.grid.group, xp, range);
                });
            }
        }
    })
}

/// Runs the micro-kernel over tiles `range` of one group of `n` images and all channel blocks.
///
/// # Safety
/// `out` must be valid for writes of the group's `[n, C_out, P]` output; the CPU must have
/// AVX-512F ([`Plan::new`] checks).
#[allow(clippy::too_many_arguments)]
unsafe fn tiles(
    plan: &Plan,
    n: usize,
    xp: &[f32],
    packed: &[f32],
    blocks: &[(usize, usize, usize)],
    bias: &[f32],
    out: *mut f32,
    range: std::ops::Range<usize>,
) {
    let k = plan.grid.g.channels_in * plan.offsets.len();
    assert!(xp.len() >= plan.grid.g.channels_in * plan.lane);
    assert!(range.end <= plan.tiles(plan.grid.group) && range.end * NV < plan.starts.len());
    for tile in range {
        let segments: [&[Segment]; NV] = std::array::from_fn(|v| {
            let v = tile * NV + v;
            &plan.segments[plan.starts[v]..plan.starts[v + 1]]
        });
        let block = Block {
            x: xp[tile * TILE..].as_ptr(),
            lane: plan.lane,
            channels: plan.grid.g.channels_in,
            offsets: &plan.offsets,
            p: plan.grid.g.p(),
            images: n,
            segments,
        };
        for &(m0, rows, at) in blocks {
            let w = packed[at..at + rows * k].as_ptr();
            let (b, out) = (&bias[m0..m0 + rows], out.add(m0 * block.p));
            // SAFETY: tap offsets stay inside the lane (Plan::new sizes it for the last
            // tile); w holds rows · k packed weights; out is the caller's.
            match rows {
                8 => block.run::<8>(w, b, out),
                4 => block.run::<4>(w, b, out),
                2 => block.run::<2>(w, b, out),
                _ => block.run::<1>(w, b, out),
            }
        }
    }
}

/// ∂L/∂W `[C_out, C_in, 3, 3]` from `x` and `dy` = ∂L/∂y (`None` for other kernel sizes, which
/// go through im2col):
/// `dW[m, c, i, j] = Σ_q dY_grid[m, q] · X_pad[c, q + i·W_p + j]`, with ∂L/∂y laid out on the
/// grid (zero at the positions the forward drops) by expand-loads along the same segments.
#[cfg(feature = "autodiff")]
pub(super) fn weight_gradient(plan: &Plan, x: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    let g = &plan.grid.g;
    let taps = plan.offsets.len();
    if taps != 9 {
        return None;
    }
    crate::fast_path::hit(crate::Kernel::Conv2dDirect, crate::Pass::Backward);
    let k = g.channels_in * taps;
    let plane = g.channels_in * g.height * g.width;
    let out_plane = g.channels_out * g.p();
    let groups = g.batch.div_ceil(plan.grid.group);
    // Row blocks of 3 output channels (27 accumulators), then 2 and 1.
    let rows: Vec<(usize, usize)> = (0..g.channels_out)
        .step_by(3)
        .map(|m0| (m0, (g.channels_out - m0).min(3)))
        .collect();
    let grid = |buffer: &mut Scratch, x: &[f32], dy: &[f32]| {
        let n = x.len() / plane;
        let [xp, dyg, _] = &mut buffer.0;
        let xp = sized(xp, g.channels_in * plan.lane);
        plan.pad(x, xp);
        let dyg = sized(dyg, g.channels_out * plan.lane);
        // SAFETY: Plan::new checked AVX-512F; the segments of images < n address dy.
        unsafe { plan.expand(n, dy, dyg) };
        plan.tiles(n) * NV
    };
    // The block of rows `(m0, r)` over one group, added into `dw` (rows m0.. of ∂L/∂W).
    let block =
        |xp: &[f32], dyg: &[f32], vectors: usize, (m0, r): (usize, usize), dw: &mut [f32]| {
            let dyg = &dyg[m0 * plan.lane..];
            // SAFETY: AVX-512F checked; every read stays below `vectors · 16 + max offset`,
            // inside each lane.
            unsafe { correlate_rows(plan, r, xp, dyg, vectors, &mut dw[..r * k]) }
        };
    let mut dw = vec![0.0f32; g.channels_out * k];
    if groups >= rayon::current_num_threads() {
        let partial = x
            .par_chunks(plan.grid.group * plane)
            .zip(dy.par_chunks(plan.grid.group * out_plane))
            .fold(
                || (Scratch::take(), Vec::new()),
                |(mut buffer, mut dw), (x, dy)| {
                    dw.resize(g.channels_out * k, 0.0f32);
                    let vectors = grid(&mut buffer, x, dy);
                    let [xp, dyg, _] = &buffer.0;
                    let (xp, dyg) = (aligned(xp), aligned(dyg));
                    for &(m0, r) in &rows {
                        block(xp, dyg, vectors, (m0, r), &mut dw[m0 * k..]);
                    }
                    (buffer, dw)
                },
            )
            .map(|(_, dw)| dw)
            .reduce(Vec::new, super::scratch::add);
        if !partial.is_empty() {
            dw = partial;
        }
    } else {
        let mut buffer = Scratch::take();
        for (x, dy) in x
            .chunks(plan.grid.group * plane)
            .zip(dy.chunks(plan.grid.group * out_plane))
        {
            let vectors = grid(&mut buffer, x, dy);
            let [xp, dyg, _] = &buffer.0;
            let (xp, dyg) = (aligned(xp), aligned(dyg));
            dw.par_chunks_mut(3 * k).zip(&rows).for_each(|(dw, &rows)| {
                block(xp, dyg, vectors, rows, dw);
            });
        }
    }
    Some(dw)
}

/// Adds the `r` rows of ∂L/∂W that start at `dyg`'s first lane to `dw` (`[r, K]`).
///
/// # Safety
/// AVX-512F and VL; `xp` and `dyg` hold whole lanes of the plan, `vectors` of them computed.
#[cfg(feature = "autodiff")]
unsafe fn correlate_rows(
    plan: &Plan,
    r: usize,
    xp: &[f32],
    dyg: &[f32],
    vectors: usize,
    dw: &mut [f32],
) {
    let c_in = plan.grid.g.channels_in;
    let k = c_in * 9;
    let lane = plan.lane;
    let offsets: [usize; 9] = std::array::from_fn(|t| plan.offsets[t]);
    assert!(xp.len() >= c_in * lane && dyg.len() >= r * lane);
    assert!(vectors * 16 + offsets[8] <= lane && dw.len() >= r * k);
    let dy = dyg.as_ptr();
    // Columns of dW in blocks of one channel's 9 taps.
    for c in 0..c_in {
        let x = xp.as_ptr().add(c * lane);
        let mut add = |sums: &[[f32; 9]]| {
            for (row, sums) in sums.iter().enumerate() {
                for (d, s) in dw[row * k + c * 9..][..9].iter_mut().zip(sums) {
                    *d += s;
                }
            }
        };
        match r {
            3 => add(&correlate::<3>(dy, lane, x, offsets, vectors)),
            2 => add(&correlate::<2>(dy, lane, x, offsets, vectors)),
            _ => add(&correlate::<1>(dy, lane, x, offsets, vectors)),
        }
    }
}

/// `Σ_q dy[r · lane + q] · x[offsets[t] + q]` over the first `vectors` 16-lane vectors, for
/// `R` rows and the 9 taps, held in `9 · R` registers.
// AVX-512VL as well: the final sums use 256- and 128-bit instructions, which without VL can only
// name registers 0–15, and the allocator would then spill accumulators inside the loop.
#[target_feature(enable = "avx512f,avx512vl")]
#[inline(never)]
#[cfg(feature = "autodiff")]
unsafe fn correlate<const R: usize>(
    dy: *const f32,
    lane: usize,
    x: *const f32,
    offsets: [usize; 9],
    vectors: usize,
) -> [[f32; 9]; R] {
    // No closures in here: they would not inherit the target feature, and the intrinsics
    // in them would become calls.
    let mut acc = [[_mm512_setzero_ps(); 9]; R];
    for v in 0..vectors {
        let mut d = [_mm512_setzero_ps(); R];
        for (r, d) in d.iter_mut().enumerate() {
            *d = _mm512_loadu_ps(dy.add(r * lane + 16 * v));
        }
        for (t, &offset) in offsets.iter().enumerate() {
            let xv = _mm512_loadu_ps(x.add(offset + 16 * v));
            for (row, d) in acc.iter_mut().zip(&d) {
                row[t] = _mm512_fmadd_ps(*d, xv, row[t]);
            }
        }
    }
    let mut sums = [[0.0; 9]; R];
    for (sums, acc) in sums.iter_mut().zip(&acc) {
        for (s, a) in sums.iter_mut().zip(acc) {
            *s = _mm512_reduce_add_ps(*a);
        }
    }
    sums
}

/// One tile's inputs for the micro-kernel.
struct Block<'a> {
    /// The padded buffer at the tile's first grid position.
    x: *const f32,
    lane: usize,
    channels: usize,
    offsets: &'a [usize],
    p: usize,
    images: usize,
    segments: [&'a [Segment]; NV],
}

impl Block<'_> {
    /// `R` output channels of the tile: `out[m · P + …] = b[m] + Σ w · x` over all channels
    /// and taps, stored for the real pixels only.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const R: usize>(&self, w: *const f32, bias: &[f32], out: *mut f32) {
        let acc = self.accumulate::<R>(w, bias);
        for (i, segments) in self.segments.iter().enumerate() {
            for s in segments.iter().filter(|s| s.image < self.images) {
                for (r, row) in acc.iter().enumerate() {
                    let dst = out.add(r * self.p + s.base);
                    if s.mask == u16::MAX {
                        _mm512_storeu_ps(dst, row[i]);
                    } else {
                        _mm512_mask_compressstoreu_ps(dst.cast(), s.mask, row[i]);
                    }
                }
            }
        }
    }

    /// The sums of [`Self::run`], in registers. Not inlined: the stores' indexing would
    /// otherwise keep the accumulators in memory, stored after every multiply-add.
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn accumulate<const R: usize>(&self, w: *const f32, bias: &[f32]) -> [[__m512; NV]; R] {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            *row = [_mm512_set1_ps(bias[r]); NV];
        }
        let mut w = w;
        for c in 0..self.channels {
            let lane = self.x.add(c * self.lane);
            for &offset in self.offsets {
                let at = lane.add(offset);
                let mut v = [_mm512_setzero_ps(); NV];
                for (i, v) in v.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(at.add(16 * i));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let wr = _mm512_set1_ps(*w.add(r));
                    for (a, v) in row.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(wr, *v, *a);
                    }
                }
                w = w.add(R);
            }
        }
        acc
    }
}
