//! The zero-padded grid the direct (stride-1) convolutions run on, without im2col: the
//! AVX-512 kernel (`direct`) and the relaxed-SIMD one for WebAssembly (`wasm_direct`).
//!
//! A group of images is copied once into a zero-padded buffer, one lane per input channel,
//! whose rows are `W_p = W + max(left, right padding)` wide (a row's right padding is the next
//! row's left padding), the images stacked vertically and sharing the zero rows between them.
//! In that buffer the output pixel at grid position `q = row · W_p + col` reads tap `(i, j)` at
//! `q + i · W_p + j` for *every* `q`, so the im2col row of `(c, i, j)` is lane `c` read at a
//! constant offset. The grid's extra positions (the padding column right of each row, the
//! shared rows between images) are computed and dropped.

use super::geometry::Geometry;

/// Where a stride-1 convolution's images lie on the grid; the same for every group of images.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    /// The convolution.
    pub(super) g: Geometry,
    /// Padded row width `W_p`.
    pub(super) width: usize,
    /// Grid rows from one image's first row to the next one's.
    pub(super) image_rows: usize,
    /// Images per group.
    pub(super) group: usize,
}

impl Grid {
    /// The grid of a stride-1, dilation-1 convolution (`None` otherwise), with images grouped
    /// for at least `min_positions` grid positions per group, in a number of groups that the
    /// threads share evenly.
    pub(super) fn new(g: &Geometry, min_positions: usize) -> Option<Self> {
        if g.stride != [1, 1] || g.dilation != [1, 1] {
            return None;
        }
        let [kh, kw] = g.kernel;
        // A row holds the image row and its left padding; the right padding is the next row's
        // left padding (a read past a row's end lands there): at least the k_w − 1 − left
        // columns the last outputs read beyond the image, and a whole output row.
        let width = (g.width + g.pad[1])
            .max(g.width_out + kw - 1 - g.pad[1].min(kw - 1))
            .max(g.width_out);
        // Rows of padding below the image (stride 1: H_out = H + top + bottom − k_h + 1).
        let below = (g.height_out + kh - 1).checked_sub(g.height + g.pad[0])?;
        // Consecutive images share zero rows: as many as both paddings have, and fewer than
        // k_h (so every grid row still belongs to one image).
        let image_rows = g.height_out + kh - 1 - g.pad[0].min(below).min(kh - 1);
        let mut grid = Self {
            g: *g,
            width,
            image_rows,
            group: 1,
        };
        let smallest = (1..=g.batch)
            .find(|&n| grid.positions(n) >= min_positions)
            .unwrap_or(g.batch);
        let threads = rayon::current_num_threads();
        let mut groups = g.batch.div_ceil(smallest);
        if g.batch >= threads {
            groups = groups.next_multiple_of(threads);
        }
        grid.group = g.batch.div_ceil(groups);
        Some(grid)
    }

    /// Grid positions of a group of `n` images (through the last image's last output row).
    pub(super) fn positions(&self, n: usize) -> usize {
        ((n - 1) * self.image_rows + self.g.height_out) * self.width
    }

    /// The offset of each kernel tap `(i, j)` from the grid position it serves, row-major.
    pub(super) fn offsets(&self) -> Vec<usize> {
        let [kh, kw] = self.g.kernel;
        let width = self.width;
        (0..kh)
            .flat_map(|i| (0..kw).map(move |j| i * width + j))
            .collect()
    }

    /// The fraction of a full group's grid positions that are output pixels.
    pub(super) fn real_fraction(&self) -> f64 {
        (self.group * self.g.p()) as f64 / self.positions(self.group) as f64
    }

    /// Copies a group's images (`x`: `[n, C_in, H, W]`) into `buffer`, one lane of `lane`
    /// floats per input channel, zero everywhere else: `copy(dst, Some(src))` copies a row,
    /// `copy(dst, None)` zeroes a stretch (the caller's fastest way to do either).
    pub(super) fn pad(
        &self,
        x: &[f32],
        buffer: &mut [f32],
        lane: usize,
        mut copy: impl FnMut(&mut [f32], Option<&[f32]>),
    ) {
        let g = &self.g;
        let hw = g.height * g.width;
        let n = x.len() / (g.channels_in * hw);
        assert!(buffer.len() >= g.channels_in * lane && x.len() == n * g.channels_in * hw);
        for (c, lane) in buffer
            .chunks_exact_mut(lane)
            .take(g.channels_in)
            .enumerate()
        {
            let mut filled = 0;
            for b in 0..n {
                let src = &x[(b * g.channels_in + c) * hw..][..hw];
                let first = (b * self.image_rows + g.pad[0]) * self.width + g.pad[1];
                for (y, row) in src.chunks_exact(g.width).enumerate() {
                    let at = first + y * self.width;
                    copy(&mut lane[filled..at], None);
                    copy(&mut lane[at..at + g.width], Some(row));
                    filled = at + g.width;
                }
            }
            copy(&mut lane[filled..], None);
        }
    }
}
