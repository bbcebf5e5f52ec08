//! Naming a dataset on the command line: `mnist10k`, `fashion-mnist[:DIR]`, `cifar10:DIR`,
//! `folder:DIR`.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, Split};
use crate::error::{DataError, Result};

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A dataset source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    /// The bundled MNIST-10k (embedded in the binary).
    Mnist10k,
    /// Fashion-MNIST IDX files in a directory (Debian's by default).
    FashionMnist(PathBuf),
    /// CIFAR-10 binary batches in a directory.
    Cifar10(PathBuf),
    /// An image folder (one sub-folder per class), resized to `image_size` with `channels`.
    Folder {
        /// The root folder.
        dir: PathBuf,
        /// Output size (square).
        image_size: usize,
        /// 1 (grey) or 3 (RGB).
        channels: usize,
    },
}

impl DatasetSpec {
    /// Parses `mnist10k`, `fashion-mnist[:DIR]`, `cifar10:DIR` or `folder:DIR`; image folders
    /// take `image_size` and `channels` from the caller.
    pub fn parse(s: &str, image_size: usize, channels: usize) -> Result<Self> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let need = |what: &str| {
            arg.filter(|a| !a.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    DataError::Invalid(format!(
                        "dataset `{kind}` needs a directory: `{kind}:{what}`"
                    ))
                })
        };
        Ok(match kind {
            "mnist10k" | "mnist" => Self::Mnist10k,
            "fashion-mnist" | "fashion" => {
                Self::FashionMnist(arg.map_or_else(|| PathBuf::from(FASHION_MNIST_DIR), PathBuf::from))
            }
            "cifar10" => Self::Cifar10(need("DIR")?),
            "folder" => Self::Folder {
                dir: need("DIR")?,
                image_size,
                channels,
            },
            other => {
                return Err(DataError::Invalid(format!(
                    "unknown dataset `{other}` (expected mnist10k, fashion-mnist[:DIR], cifar10:DIR or folder:DIR)"
                )))
            }
        })
    }

    /// The kind's canonical name (`mnist10k`, `fashion-mnist`, `cifar10` or `folder`), without
    /// the directory: what a classifier trained on one copy of the data is valid for.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Mnist10k => "mnist10k",
            Self::FashionMnist(_) => "fashion-mnist",
            Self::Cifar10(_) => "cifar10",
            Self::Folder { .. } => "folder",
        }
    }

    /// The image shape `[channels, size, size]` of a dataset whose images come in one size
    /// (`None` for an image folder, which is resized to the caller's).
    pub fn fixed_shape(&self) -> Option<[usize; 3]> {
        match self {
            Self::Mnist10k | Self::FashionMnist(_) => Some([1, 28, 28]),
            Self::Cifar10(_) => Some([3, 32, 32]),
            Self::Folder { .. } => None,
        }
    }

    /// Loads one split.
    pub fn load(&self, split: Split) -> Result<Dataset> {
        match self {
            Self::Mnist10k => crate::mnist10k::load(split),
            Self::FashionMnist(dir) => load_fashion(dir, split),
            Self::Cifar10(dir) => crate::cifar::load(dir, split),
            Self::Folder {
                dir,
                image_size,
                channels,
            } => match split {
                Split::Train => crate::image_folder::load(dir, *image_size, *channels),
                Split::Test => Err(DataError::Invalid(format!(
                    "{}: an image folder has no test split",
                    dir.display()
                ))),
            },
        }
    }
}

/// The Fashion-MNIST class names.
pub fn fashion_class_names() -> Vec<String> {
    [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn load_fashion(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(DataError::Invalid(format!(
            "{}: Fashion-MNIST not found (install it with `apt-get install dataset-fashion-mnist`)",
            dir.display()
        )));
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let mut ds =
        crate::idx::load_idx_pair(&images, &labels, "fashion-mnist", fashion_class_names())?;
    ds.name = format!("fashion-mnist/{}", split.name());
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!(
            DatasetSpec::parse("mnist10k", 0, 0).unwrap(),
            DatasetSpec::Mnist10k
        );
        assert_eq!(
            DatasetSpec::parse("fashion-mnist", 0, 0).unwrap(),
            DatasetSpec::FashionMnist(FASHION_MNIST_DIR.into())
        );
        assert_eq!(
            DatasetSpec::parse("cifar10:/d", 0, 0).unwrap(),
            DatasetSpec::Cifar10("/d".into())
        );
        assert!(DatasetSpec::parse("cifar10", 0, 0)
            .unwrap_err()
            .to_string()
            .contains("needs a directory"));
        assert!(DatasetSpec::parse("imagenet", 0, 0)
            .unwrap_err()
            .to_string()
            .contains("unknown dataset"));
        // Aliases and directories name the same kind.
        for (spec, kind) in [
            ("mnist", "mnist10k"),
            ("fashion", "fashion-mnist"),
            ("fashion-mnist:/d", "fashion-mnist"),
            ("folder:/d", "folder"),
        ] {
            assert_eq!(
                DatasetSpec::parse(spec, 8, 1).unwrap().kind(),
                kind,
                "{spec}"
            );
        }
    }

    #[test]
    fn missing_paths_are_clear_errors() {
        let e = DatasetSpec::FashionMnist("/nonexistent".into())
            .load(Split::Train)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("apt-get install dataset-fashion-mnist"),
            "{e}"
        );
        let e = DatasetSpec::Cifar10("/nonexistent".into())
            .load(Split::Train)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/data_batch_1.bin:"),
            "{e}"
        );
    }

    #[test]
    fn fashion_mnist_when_installed() {
        let dir = Path::new(FASHION_MNIST_DIR);
        if !dir.is_dir() {
            eprintln!("skipped: {FASHION_MNIST_DIR} not installed");
            return;
        }
        let test = DatasetSpec::FashionMnist(dir.into())
            .load(Split::Test)
            .unwrap();
        assert_eq!(
            (test.len(), test.image_shape(), test.num_classes()),
            (10_000, [1, 28, 28], 10)
        );
    }
}
