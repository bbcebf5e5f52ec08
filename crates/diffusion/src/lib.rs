#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! # diffusion
//!
//! The shared heart of the toolkit, compiled unchanged for native targets and for
//! `wasm32-unknown-unknown`. In data-flow order:
//!
//! 1. [`schedule`]: the noise schedule β_t and every constant derived from it (ᾱ_t, …), in
//!    host-side `f64`.
//! 2. [`objective`]: the forward process q(x_t | x_0) and the training losses.
//! 3. [`unet`]: the class-conditional U-Net that predicts ε (or v, or x_0) from (x_t, t, y).
//! 4. [`sampler`]: DDPM, DDIM and DPM-Solver++ schedulers behind one [`Scheduler`] trait and
//!    one step-by-step sampling loop ([`Sampling`]).
//! 5. [`guidance`]: classifier-free guidance, ε̃ = ε_uncond + w·(ε_cond − ε_uncond).
//! 6. [`weights`]: safetensors weights with their JSON [`ModelConfig`].
//!
//! Alongside: [`noise`] (portable seeded noise tensors) and [`error`].
//!
//! Models take a Burn [`Device`](burn::tensor::Device); which backends exist is decided by this
//! crate's cargo features (`flex`, `autodiff`, `webgpu`, `wgpu`, `cuda`). Everything that must be
//! identical across backends — schedule constants, timesteps, time embeddings, noise — is
//! computed on the host in `f64` and uploaded. The U-Net's operations go through the routers of
//! the `flex-kernels` crate (`kernels::conv2d(&conv, x)`, …): hand-written CPU kernels on Flex,
//! Burn's own ops on every other backend. This crate has no `unsafe` code.

// In data-flow order (blank lines keep rustfmt from sorting them).
pub mod schedule;

pub mod objective;

pub mod unet;

pub mod precision;

pub mod sampler;

pub mod guidance;

pub mod weights;

pub mod noise;

pub mod error;

pub use error::{Error, Result};
pub use guidance::classifier_free_guidance;
pub use noise::{NoiseRng, NormalTensor};
pub use objective::{mse_loss, q_sample, PredictionType};
pub use precision::Precision;
pub use sampler::{
    DdimScheduler, DdimSchedulerConfig, DdpmScheduler, DdpmSchedulerConfig, Denoiser,
    DpmSolverMultistep, DpmSolverMultistepConfig, SampleRequest, Sampling, Scheduler,
    SchedulerState, TimestepSpacing,
};
pub use schedule::{BetaSchedule, NoiseSchedule, NoiseScheduleConfig};
pub use unet::{TimeMode, UNet, UNetConfig};
pub use weights::ModelConfig;
