#![warn(missing_docs)]
//! Training and inspection of DDPMs built on the shared `diffusion` crate.
//!
//! * [`train`]: the training loop (checkpoints with exact resume, metrics, sample grids,
//!   export of the EMA weights), configured by [`config`] and reporting through [`observer`];
//! * [`step`]: one optimisation step (label dropout for classifier-free guidance, the loss,
//!   global gradient-norm clipping, AdamW, non-finite step skipping), testable on its own;
//! * [`parallel`]: data-parallel ranks and the reducers that average their gradients (Burn's
//!   collective on CUDA, host memory on the CPU);
//! * [`window`]: several steps queued on the device per read-back (no host wait per step on a
//!   GPU), rolled back and replayed around a non-finite step;
//! * [`ema`], [`lr`], [`grad`]: its parts, each testable on its own; [`run_log`]: the run
//!   directory's metrics and loss plot;
//! * [`checkpoint`]: atomic checkpoint directories;
//! * [`generate`]: sampling a saved model to PNG grids, raw `.npy` and trajectories;
//! * [`plot`]: loss and schedule plots (PNG grids and files are the `artifacts` crate's);
//! * [`device`]: choosing the Burn device (`cpu`, `wgpu`, `cuda[:N]`) at run time.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod ema;
pub mod error;
pub mod generate;
pub mod grad;
pub mod lr;
pub mod observer;
pub mod parallel;
pub mod plot;
pub mod run_log;
pub mod step;
pub mod train;
pub mod window;

pub use error::{Result, TrainError};
