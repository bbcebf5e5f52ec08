//! The in-memory dataset every source decodes into.

use crate::error::{DataError, Result};

/// Train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The held-out test split.
    Test,
}

impl Split {
    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "test",
        }
    }
}

/// Images as `u8` pixels, channels-first (`[n, channels, height, width]`), with class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Name for logs and reports (e.g. `mnist10k/train`).
    pub name: String,
    /// Pixels, `len = n · channels · height · width`.
    pub pixels: Vec<u8>,
    /// One label per image, in `0..num_classes`.
    pub labels: Vec<usize>,
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Class names, one per class.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset, checking that sizes and labels agree.
    pub fn new(
        name: impl Into<String>,
        pixels: Vec<u8>,
        labels: Vec<usize>,
        [channels, height, width]: [usize; 3],
        class_names: Vec<String>,
    ) -> Result<Self> {
        let name = name.into();
        let per = channels * height * width;
        if per == 0 || labels.is_empty() {
            return Err(DataError::Invalid(format!("dataset {name} is empty")));
        }
        if pixels.len() != labels.len() * per {
            return Err(DataError::Invalid(format!(
                "dataset {name}: {} pixels for {} images of {channels}×{height}×{width}",
                pixels.len(),
                labels.len()
            )));
        }
        if let Some(&l) = labels.iter().find(|&&l| l >= class_names.len()) {
            return Err(DataError::Invalid(format!(
                "dataset {name}: label {l} but only {} classes",
                class_names.len()
            )));
        }
        Ok(Self {
            name,
            pixels,
            labels,
            channels,
            height,
            width,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images (never true for a constructed dataset).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// `[channels, height, width]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Image `i` as `f32` in [-1, 1] (x / 127.5 − 1).
    pub fn image_f32(&self, i: usize) -> Vec<f32> {
        self.image(i)
            .iter()
            .map(|&p| p as f32 / 127.5 - 1.0)
            .collect()
    }

    /// The first `n` images (or all), for small fixtures and quick runs.
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        let per = self.channels * self.height * self.width;
        Self {
            name: format!("{}[..{n}]", self.name),
            pixels: self.pixels[..n * per].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }
}
