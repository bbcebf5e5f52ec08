#![warn(missing_docs)]
//! # flex-kernels
//!
//! Hand-written CPU kernels for the U-Net's operations on Burn's Flex backend, below the model
//! (as candle keeps its CPU kernels in `candle-core/src/cpu_backend` and its custom ops in
//! `candle-nn`). Each public function is a **router** with the signature of the Burn op it
//! replaces: for f32 tensors on Flex — plain, or under autodiff as one graph node with a
//! handwritten backward pass — it runs the kernel; for every other backend (WebGPU, CUDA),
//! dtype or unsupported shape it calls Burn's own op, so the result never depends on which
//! path ran beyond float rounding.
//!
//! | router | replaces |
//! |---|---|
//! | [`conv2d`], [`conv2d_op`] | `Conv2d::forward`, `module::conv2d` |
//! | [`group_norm`], [`group_norm_silu`] | `GroupNorm::forward`, and it followed by SiLU |
//! | [`silu`] | `activation::silu` |
//! | [`add`], [`cat_channels`] | `a + b`, `Tensor::cat([a, b], 1)` |
//! | [`film`], [`film_silu`] | `x·(1 + scale) + shift`, and it followed by SiLU |
//! | [`dropout`] | `Dropout::forward` |
//! | [`self_attention`] | reshapes + `module::attention` over a `qkv` map |
//!
//! The slice-level kernels are private modules under each router. Every `unsafe` block of the
//! toolkit is in this crate (AVX-512 intrinsics, uninitialised outputs, and [`allocator`]'s
//! `mallopt`), each with its `SAFETY` reason.
//! [`with_burn_ops`] runs a computation on Burn's ops instead, and [`calls`] counts, per
//! thread, which kernels ran, so tests can prove both paths.
//!
//! Features: `flex` (the fast path; without it every router is Burn's op) and `autodiff` (the
//! kernels' autodiff nodes), both on by default.

pub mod allocator;
mod conv2d;
mod dropout;
mod elementwise;
mod fast_path;
#[cfg(feature = "flex")]
mod flex_tensor;
mod group_norm;
mod self_attention;
mod silu;

pub use conv2d::{conv2d, conv2d_op};
pub use dropout::dropout;
pub use elementwise::{add, cat_channels, film, film_silu};
pub use fast_path::{calls, with_burn_ops, Kernel, Pass};
pub use group_norm::{group_norm, group_norm_silu};
pub use self_attention::self_attention;
pub use silu::silu;
