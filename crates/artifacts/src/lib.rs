#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # artifacts
//!
//! What the toolkit writes, in one place for the trainer, the evaluator, the HTTP service and
//! the browser: files replaced atomically ([`write_atomic`]; every writer goes through it, so
//! an interrupted run never leaves a half-written file), model-space values as 8-bit pixels
//! ([`pixels`], the same mapping on every target), and, with the default `png` feature, PNG
//! grids ([`images`]) and NumPy `.npy` arrays ([`npy`]), and safetensors files with a canonical header
//! ([`canonical_safetensors`]: same tensors ⇒ same bytes).

mod atomic;
#[cfg(feature = "png")]
pub mod images;
#[cfg(feature = "png")]
pub mod npy;
pub mod pixels;
mod safetensors_header;

pub use atomic::{ensure_parent, write_atomic, IoError};
#[cfg(feature = "png")]
pub use images::{grid, image_values, load_image_values, png_bytes, save_png};
#[cfg(feature = "png")]
pub use npy::{npy_bytes, parse_npy, save_npy};
pub use safetensors_header::{canonical_safetensors, HeaderError};
