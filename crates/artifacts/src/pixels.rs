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
    }
}
