//! PNG grids of image batches.

use std::path::Path;

use image::{ImageEncoder, RgbImage};

use crate::atomic::{ensure_parent, write_atomic, IoError};
use crate::pixels::grid_rgb;

/// Lays out a batch `[n, c, h, w]` (values in [-1, 1]) as a grid with `cols` columns, `pad`
/// pixels of grey between cells, each pixel drawn `scale × scale` ([`grid_rgb`] as an image).
pub fn grid(values: &[f32], shape: [usize; 4], cols: usize, pad: u32, scale: u32) -> RgbImage {
    let g = grid_rgb(values, shape, cols, pad, scale);
    RgbImage::from_raw(g.width, g.height, g.rgb).expect("grid_rgb sizes its buffer")
}

/// Encodes an RGB image as PNG bytes.
pub fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding to memory cannot fail");
    out
}

/// Writes an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<(), IoError> {
    ensure_parent(path)?;
    write_atomic(path, &png_bytes(img))
}

/// Reads an image file (PNG, or any format the `image` crate's enabled decoders read) as model
/// values in [-1, 1], channel-major `[channels, size, size]`: grey (1 channel, luma) or RGB (3),
/// alpha dropped. A different size is an error unless `resize` (then a triangle-filtered
/// resize to `size` × `size`). The error is one line.
pub fn load_image_values(
    path: &Path,
    channels: usize,
    size: usize,
    resize: bool,
) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    image_values(&bytes, channels, size, resize).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load_image_values`] of an image file's bytes (a PNG in an API request).
pub fn image_values(
    bytes: &[u8],
    channels: usize,
    size: usize,
    resize: bool,
) -> Result<Vec<f32>, String> {
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| format!("not a readable image ({e})"))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let img = if (w, h) == (size, size) {
        img
    } else if resize {
        img.resize_exact(
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        )
    } else {
        return Err(format!(
            "the image is {w}×{h}; the model takes {size}×{size} (resize it, or ask for it to \
             be resized)"
        ));
    };
    // One conversion for files, API requests and the browser's canvases.
    crate::pixels::rgba_to_values(img.to_rgba8().as_raw(), channels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::npy_bytes;

    #[test]
    fn grid_layout_and_npy_header() {
        let values = vec![
            -1.0f32, 1.0, 1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0,
        ];
        let img = grid(&values, [3, 1, 2, 2], 2, 1, 2);
        assert_eq!((img.width(), img.height()), (2 * 5 + 1, 2 * 5 + 1));
        assert_eq!(img.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(img.get_pixel(3, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(0, 0).0, [96, 96, 96]);
        let npy = npy_bytes(&[1.0, 2.0], &[2]);
        assert_eq!(&npy[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(std::str::from_utf8(&npy[10..10 + hlen])
            .unwrap()
            .contains("'shape': (2,)"));
        assert_eq!(npy.len(), 10 + hlen + 8);
    }
}
