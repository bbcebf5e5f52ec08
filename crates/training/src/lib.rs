#![warn(missing_docs)]
//! Training and inspection of DDPMs built on the shared `diffusion` crate.
//!
//! * [`train`]: the training loop (AdamW with warmup + cosine decay, global gradient-norm
//!   clipping, label dropout for classifier-free guidance, EMA, non-finite step skipping,
//!   checkpoints with exact resume, metrics, sample grids, export of the EMA weights);
//! * [`ema`], [`lr`], [`grad`]: its parts, each testable on its own;
//! * [`checkpoint`]: atomic checkpoint directories;
//! * [`generate`]: sampling a saved model to PNG grids, raw `.npy` and trajectories;
//! * [`images`], [`plot`]: PNG encoding, grids, loss and schedule plots;
//! * [`device`]: choosing the Burn device (`cpu`, `wgpu`, `cuda[:N]`) at run time.

pub mod allocator;
pub mod checkpoint;
pub mod device;
pub mod ema;
pub mod error;
pub mod generate;
pub mod grad;
pub mod lr;
pub mod plot;
pub mod train;

pub use error::{Result, TrainError};
