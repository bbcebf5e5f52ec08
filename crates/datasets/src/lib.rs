#![warn(missing_docs)]
//! Image datasets for diffusion training.
//!
//! Every source decodes into one in-memory [`Dataset`] of `u8` pixels (channels-first) and
//! class labels: the bundled MNIST-10k ([`mnist10k`]), IDX files such as Fashion-MNIST
//! ([`idx`]), CIFAR-10 binary batches ([`cifar`]) and image folders ([`image_folder`]).
//! [`loader::BatchLoader`] turns a dataset into normalised `f32` batches on a background
//! thread, in an order fixed by the seed and the step alone, so training resumes exactly.

pub mod cifar;
pub mod dataset;
pub mod error;
pub mod idx;
pub mod image_folder;
pub mod loader;
pub mod mnist10k;
pub mod spec;

pub use dataset::{Dataset, Split};
pub use error::{DataError, Result};
pub use loader::{Batch, BatchLoader, LoaderConfig};
pub use spec::DatasetSpec;
