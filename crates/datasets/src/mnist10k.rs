//! The bundled MNIST-10k: 10,000 real MNIST digits embedded in the binary, split 9,000 / 1,000
//! (see `crates/datasets/data/mnist10k/README.md` for provenance, licence and regeneration).

use std::path::Path;

use crate::dataset::Dataset;
use crate::dataset::Split;
use crate::error::Result;
use crate::idx::{from_idx_bytes, maybe_gunzip};

const TRAIN_IMAGES: &[u8] = include_bytes!("../data/mnist10k/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../data/mnist10k/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../data/mnist10k/test-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../data/mnist10k/test-labels-idx1-ubyte.gz");

/// The digit class names `0`..`9`.
pub fn class_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// Loads one split of the bundled MNIST-10k.
pub fn load(split: Split) -> Result<Dataset> {
    let (images, labels) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS),
        Split::Test => (TEST_IMAGES, TEST_LABELS),
    };
    let ip = Path::new("<bundled mnist10k images>");
    let lp = Path::new("<bundled mnist10k labels>");
    from_idx_bytes(
        &maybe_gunzip(images.to_vec(), ip)?,
        ip,
        &maybe_gunzip(labels.to_vec(), lp)?,
        lp,
        &format!("mnist10k/{}", split.name()),
        class_names(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_split_is_stratified_9000_1000() {
        let train = load(Split::Train).unwrap();
        let test = load(Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (9000, 1000));
        assert_eq!(train.image_shape(), [1, 28, 28]);
        for c in 0..10 {
            let n_train = train.labels.iter().filter(|&&l| l == c).count();
            let n_test = test.labels.iter().filter(|&&l| l == c).count();
            let share = n_test as f64 / (n_train + n_test) as f64;
            assert!((share - 0.1).abs() < 0.01, "class {c}: {share}");
        }
        // Real digits: mostly black background, some full-intensity strokes.
        let zeros = train.pixels.iter().filter(|&&p| p == 0).count() as f64;
        assert!(zeros / train.pixels.len() as f64 > 0.7);
        assert!(train.pixels.iter().any(|&p| p == 255));
    }
}
