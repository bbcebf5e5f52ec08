//! Evaluation of trained diffusion models.
//!
//! - [`inception`]: the FID Inception-v3 (pytorch-fid's network and input pipeline) in Burn.
//! - [`fid`]: feature statistics in f64 and the Fréchet distance.
//! - [`classifier`]: a small CNN for class accuracy, a classifier score and a domain FID.
//! - [`scores`]: accuracy and the Inception-Score form.
//! - [`evaluate`]: the `eval` run and its JSON / Markdown / plot report.
//! - [`chunks`]: the run's finished work kept on disk, so a stopped run resumes.
//! - [`compare`]: several reports side by side (quality per model call).

pub mod chunks;
pub mod classifier;
pub mod compare;
pub mod editing;
pub mod error;
pub mod evaluate;
pub mod fid;
pub mod inception;
pub mod scores;

pub use error::{EvalError, Result};
