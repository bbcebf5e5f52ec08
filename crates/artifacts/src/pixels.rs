//! From model space ([-1, 1]) to 8-bit pixels, the same way on every target.

/// Maps one value in [-1, 1] to a byte: round((clamp(v, −1, 1) + 1) · 127.5).
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}

/// Maps a channels-first image batch `[n, c, h, w]` to interleaved RGBA bytes per image
/// (grey is repeated to R, G, B; alpha is 255), `n · h · w · 4` bytes in all.
pub fn to_rgba(values: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<u8> {
    assert_eq!(values.len(), n * c * h * w, "values do not match the shape");
    assert!(c == 1 || c == 3, "1 or 3 channels");
    let hw = h * w;
    let mut out = Vec::with_capacity(n * hw * 4);
    for img in values.chunks_exact(c * hw) {
        for i in 0..hw {
            let px = |ch: usize| to_u8(img[(if c == 1 { 0 } else { ch }) * hw + i]);
            out.extend([px(0), px(1), px(2), 255]);
        }
    }
    out
}

/// An 8-bit pixel as a model value: 0 → −1, 255 → 1 (the inverse of [`to_u8`] on its range).
pub fn from_u8(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// The grey level of an RGB pixel as Pillow's `Image.convert("L")` computes it (ITU-R 601-2
/// luma, L = R·299/1000 + G·587/1000 + B·114/1000 in 16-bit fixed point, rounded), which is what
/// a diffusers user gets from a colour image for a grey model; integers, so every target
/// computes the same byte.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19_595 * r as u32 + 38_470 * g as u32 + 7_471 * b as u32 + 0x8000) >> 16) as u8
}

/// Model values `[channels, height, width]` (channel-major, in [-1, 1]) of interleaved RGBA
/// bytes: grey (1 channel, [`luma`]) or RGB (3); alpha is dropped. `trainer sample
/// --init-image`, the HTTP API and the browser all read images through this.
pub fn rgba_to_values(rgba: &[u8], channels: usize) -> Result<Vec<f32>, String> {
    if rgba.len() % 4 != 0 {
        return Err(format!("{} bytes are not whole RGBA pixels", rgba.len()));
    }
    let px = rgba.chunks_exact(4);
    match channels {
        1 => Ok(px.map(|p| from_u8(luma(p[0], p[1], p[2]))).collect()),
        3 => {
            let hw = rgba.len() / 4;
            let mut out = vec![0.0; 3 * hw];
            for (i, p) in px.enumerate() {
                for c in 0..3 {
                    out[c * hw + i] = from_u8(p[c]);
                }
            }
            Ok(out)
        }
        c => Err(format!("images of {c} channels are not supported (1 or 3)")),
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridPixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width · height · 3` bytes.
    pub rgb: Vec<u8>,
}

impl GridPixels {
    /// The same pixels as RGBA (alpha 255), as a canvas takes them.
    pub fn to_rgba(&self) -> Vec<u8> {
        self.rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect()
    }
}

/// Grey of the padding between grid cells.
pub const GRID_PAD_GREY: u8 = 96;

/// Lays out a batch `[n, c, h, w]` (values in [-1, 1]) as a grid with `cols` columns (clamped
/// to 1..=n), `pad` pixels of grey between and around the cells, each pixel drawn
/// `scale × scale` (at least 1). `trainer sample`'s PNG and the browser page's canvas are this
/// image.
pub fn grid_rgb(
    values: &[f32],
    [n, c, h, w]: [usize; 4],
    cols: usize,
    pad: u32,
    scale: u32,
) -> GridPixels {
    assert_eq!(values.len(), n * c * h * w, "values do not match the shape");
    assert!(c == 1 || c == 3, "1 or 3 channels");
    let scale = scale.max(1) as usize;
    let pad = pad as usize;
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let (cw, ch) = (w * scale, h * scale);
    let width = cols * (cw + pad) + pad;
    let height = rows * (ch + pad) + pad;
    let mut rgb = vec![GRID_PAD_GREY; width * height * 3];
    let hw = h * w;
    for (k, cell) in values.chunks_exact(c * hw).enumerate() {
        let (x0, y0) = (pad + (k % cols) * (cw + pad), pad + (k / cols) * (ch + pad));
        for y in 0..h {
            for x in 0..w {
                let px = |ch_: usize| to_u8(cell[(if c == 1 { 0 } else { ch_ }) * hw + y * w + x]);
                let p = [px(0), px(1), px(2)];
                for dy in 0..scale {
                    let row = (y0 + y * scale + dy) * width;
                    for dx in 0..scale {
                        let i = 3 * (row + x0 + x * scale + dx);
                        rgb[i..i + 3].copy_from_slice(&p);
                    }
                }
            }
        }
    }
    GridPixels {
        width: width as u32,
        height: height as u32,
        rgb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_range() {
        assert_eq!(
            [to_u8(-1.0), to_u8(0.0), to_u8(1.0), to_u8(7.0), to_u8(-3.0)],
            [0, 128, 255, 255, 0]
        );
        let rgba = to_rgba(&[-1.0, 1.0], [1, 1, 1, 2]);
        assert_eq!(rgba, vec![0, 0, 0, 255, 255, 255, 255, 255]);
        assert_eq!([from_u8(0), from_u8(255)], [-1.0, 1.0]);
        assert!((0..=255u8).all(|v| to_u8(from_u8(v)) == v));
    }

    #[test]
    fn reads_rgba_as_grey_or_rgb() {
        let rgba = [255, 255, 255, 9, 10, 200, 30, 255];
        // Grey pixels keep their level exactly.
        assert!((0..=255u8).all(|v| luma(v, v, v) == v));
        // Colour as Pillow 13.0.0 converts it (`Image.convert("L")` of these pixels).
        let px = [
            (98, 243, 110),
            (14, 172, 201),
            (10, 200, 30),
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
            (1, 2, 3),
            (250, 251, 252),
        ];
        let pillow = [184, 128, 124, 76, 150, 29, 2, 251];
        for ((r, g, b), want) in px.into_iter().zip(pillow) {
            assert_eq!(luma(r, g, b), want, "{r}, {g}, {b}");
        }
        assert_eq!(rgba_to_values(&rgba, 1).unwrap(), vec![1.0, from_u8(124)]);
        assert_eq!(
            rgba_to_values(&rgba, 3).unwrap(),
            vec![1.0, from_u8(10), 1.0, from_u8(200), 1.0, from_u8(30)]
        );
        assert!(rgba_to_values(&rgba[..5], 1).unwrap_err().contains("RGBA"));
        assert!(rgba_to_values(&rgba, 2).unwrap_err().contains("2 channels"));
    }

    #[test]
    fn lays_out_a_grid() {
        // Three 1×2 images in 2 columns, pad 1, scale 2: 2·(4+1)+1 = 11 wide, 2·(2+1)+1 = 7 high.
        let g = grid_rgb(&[-1.0, 1.0, 0.0, 0.0, 1.0, -1.0], [3, 1, 1, 2], 2, 1, 2);
        assert_eq!((g.width, g.height, g.rgb.len()), (11, 7, 11 * 7 * 3));
        let at = |x: usize, y: usize| g.rgb[3 * (y * 11 + x)];
        assert_eq!(
            [at(0, 0), at(1, 1), at(2, 2), at(3, 1), at(5, 1)],
            [96, 0, 0, 255, 96]
        );
        assert_eq!(
            [at(6, 1), at(8, 2), at(1, 4), at(3, 5), at(6, 4)],
            [128, 128, 255, 0, 96]
        );
        assert_eq!(g.to_rgba()[..8], [96, 96, 96, 255, 96, 96, 96, 255]);
    }
}
