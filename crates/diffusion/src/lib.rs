#![warn(missing_docs)]
//! # diffusion
//!
//! The shared heart of the toolkit, compiled unchanged for native targets and for
//! `wasm32-unknown-unknown`: noise schedules ([`schedule`]), the forward process and training
//! objectives ([`objective`]), a class-conditional U-Net ([`unet`]), DDPM/DDIM samplers with one
//! sampling loop ([`sampler`]), classifier-free guidance ([`guidance`]), portable seeded noise
//! ([`noise`]) and safetensors weights with a JSON config ([`weights`]).
//!
//! Models take a Burn [`Device`](burn::tensor::Device); which backends exist is decided by this
//! crate's cargo features (`flex`, `autodiff`, `webgpu`, `wgpu`, `cuda`). Everything that must be
//! identical across backends — schedule constants, timesteps, time embeddings, noise — is
//! computed on the host in `f64` and uploaded.

pub mod conv2d;
pub mod dropout;
pub mod elementwise;
pub mod error;
#[cfg(feature = "flex")]
mod flex_tensor;
pub mod group_norm;
pub mod guidance;
pub mod noise;
pub mod objective;
pub mod pixels;
pub mod sampler;
pub mod schedule;
pub mod self_attention;
pub mod silu;
pub mod unet;
pub mod weights;

pub use error::{Error, Result};
pub use guidance::classifier_free_guidance;
pub use noise::NoiseRng;
pub use objective::{mse_loss, q_sample, PredictionType};
pub use sampler::{
    DdimScheduler, DdimSchedulerConfig, DdpmScheduler, DdpmSchedulerConfig, Denoiser,
    SampleRequest, Sampling, Scheduler, TimestepSpacing,
};
pub use schedule::{BetaSchedule, NoiseSchedule, NoiseScheduleConfig};
pub use unet::{TimeMode, UNet, UNetConfig};
pub use weights::ModelConfig;
