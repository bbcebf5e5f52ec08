//! An image folder: one sub-folder per class (sorted by name), PNG or JPEG files inside.
//!
//! Every image is resized so its shorter side is `image_size` (Catmull-Rom), centre-cropped to
//! `image_size × image_size`, and converted to grey or RGB; an image smaller than `image_size`
//! is an error rather than silently upscaled. Decoding runs on all cores.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Lists `(class index, file)` for every file in the class sub-folders, sorted.
fn list(dir: &Path) -> Result<(Vec<String>, Vec<(usize, PathBuf)>)> {
    let read_dir = |p: &Path| std::fs::read_dir(p).map_err(|e| DataError::io(p, e));
    let mut classes: Vec<PathBuf> = read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no class sub-folders (expected DIR/<class>/<image>.png)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    for (k, class) in classes.iter().enumerate() {
        let mut entries: Vec<PathBuf> = read_dir(class)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        files.extend(entries.into_iter().map(|p| (k, p)));
    }
    if files.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: the class folders hold no files",
            dir.display()
        )));
    }
    let names = classes
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Ok((names, files))
}

/// A reader of `path` that knows its format from the content.
fn reader(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))
}

fn unreadable(path: &Path, e: image::ImageError) -> DataError {
    DataError::format(path, format!("not a readable PNG/JPEG image ({e})"))
}

/// Decodes one file into `channels × size × size` bytes.
fn decode(path: &Path, size: usize, channels: usize) -> Result<Vec<u8>> {
    let img = reader(path)?.decode().map_err(|e| unreadable(path, e))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w.min(h) < size {
        return Err(DataError::format(
            path,
            format!("image is {w}×{h}, smaller than image_size {size} (upscaling would blur it)"),
        ));
    }
    // Resize the shorter side to `size`, then centre-crop.
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size as u32),
        ((h as f64 * scale).round() as u32).max(size as u32),
    );
    let resized = img.resize_exact(nw, nh, FilterType::CatmullRom);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let cropped = resized.crop_imm(x0, y0, size as u32, size as u32);
    let hw = size * size;
    Ok(if channels == 1 {
        cropped.to_luma8().into_raw()
    } else {
        // Interleaved RGB → channel planes.
        let rgb = cropped.to_rgb8().into_raw();
        let mut planes = vec![0u8; 3 * hw];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c * hw + i] = px[c];
            }
        }
        planes
    })
}

/// What a folder's image headers say (no pixels decoded): what the defaults of `trainer train`
/// are taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderProbe {
    /// Every image is grey (luma, with or without alpha).
    pub grey: bool,
    /// The smallest side of any image.
    pub min_side: usize,
    /// The images' size, `(width, height)`, when they all share one.
    pub uniform: Option<(usize, usize)>,
}

/// The largest image size a folder trains at by default: bigger images are resized to it
/// (a larger model input is the user's explicit choice, `--image-size`).
pub const MAX_DEFAULT_IMAGE_SIZE: usize = 64;

impl FolderProbe {
    /// The default training size: the images' smallest side, at most
    /// [`MAX_DEFAULT_IMAGE_SIZE`], rounded down to a multiple of `multiple` (the U-Net's
    /// downsampling factor), so that every image is only ever scaled down.
    pub fn default_image_size(&self, multiple: usize) -> usize {
        let m = multiple.max(1);
        let s = self.min_side.min(MAX_DEFAULT_IMAGE_SIZE);
        (s / m * m).max(m)
    }

    /// The default channel count: 1 when every image is grey, else 3.
    pub fn default_channels(&self) -> usize {
        if self.grey {
            1
        } else {
            3
        }
    }
}

/// Reads the header of every image in the class folders of `dir` (size and colour type).
pub fn probe(dir: &Path) -> Result<FolderProbe> {
    let (_, files) = list(dir)?;
    let mut probe = FolderProbe {
        grey: true,
        min_side: usize::MAX,
        uniform: None,
    };
    let mut sizes = std::collections::BTreeSet::new();
    for (_, path) in &files {
        let decoder = reader(path)?
            .into_decoder()
            .map_err(|e| unreadable(path, e))?;
        let (w, h) = image::ImageDecoder::dimensions(&decoder);
        let (w, h) = (w as usize, h as usize);
        probe.min_side = probe.min_side.min(w.min(h));
        sizes.insert((w, h));
        use image::ColorType::*;
        probe.grey &= matches!(
            image::ImageDecoder::color_type(&decoder),
            L8 | La8 | L16 | La16
        );
    }
    if sizes.len() == 1 {
        probe.uniform = sizes.into_iter().next();
    }
    Ok(probe)
}

/// Loads an image folder at `image_size` with 1 (grey) or 3 (RGB) channels.
pub fn load(dir: &Path, image_size: usize, channels: usize) -> Result<Dataset> {
    if image_size == 0 || !(channels == 1 || channels == 3) {
        return Err(DataError::Invalid(format!(
            "image folder needs image_size > 0 and 1 or 3 channels (got {image_size}, {channels})"
        )));
    }
    let (names, files) = list(dir)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = files.len().div_ceil(threads);
    let decoded: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(_, p)| decode(p, image_size, channels))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoder thread"))
            .collect()
    });
    let mut pixels = Vec::with_capacity(files.len() * channels * image_size * image_size);
    for part in decoded {
        for img in part? {
            pixels.extend(img);
        }
    }
    let labels = files.iter().map(|(k, _)| *k).collect();
    Dataset::new(
        format!("folder:{}", dir.display()),
        pixels,
        labels,
        [channels, image_size, image_size],
        names,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_resizes_crops_and_rejects_non_images() {
        let dir = std::env::temp_dir().join(format!("imgfolder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (class, shade) in [("cats", 40u8), ("dogs", 200u8)] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            // 20×10 image: resized to 16×8 → shorter side 8, centre crop 8×8.
            let img = image::RgbImage::from_pixel(20, 10, image::Rgb([shade, shade, shade]));
            img.save(dir.join(class).join("a.png")).unwrap();
        }
        let ds = load(&dir, 8, 3).unwrap();
        assert_eq!(
            (ds.len(), ds.image_shape(), ds.num_classes()),
            (2, [3, 8, 8], 2)
        );
        assert_eq!(ds.class_names, vec!["cats", "dogs"]);
        assert!(ds.image(0).iter().all(|&p| p.abs_diff(40) <= 1));
        assert!(ds.image(1).iter().all(|&p| p.abs_diff(200) <= 1));
        let grey = load(&dir, 4, 1).unwrap();
        assert_eq!(grey.image_shape(), [1, 4, 4]);
        let e = load(&dir, 16, 1).unwrap_err().to_string();
        assert!(e.contains("is 20×10, smaller than image_size 16"), "{e}");
        std::fs::write(dir.join("dogs").join("notes.txt"), b"hello").unwrap();
        let e = load(&dir, 8, 3).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt: not a readable PNG/JPEG image"),
            "{e}"
        );
        let e = load(&dir.join("missing"), 8, 3).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
