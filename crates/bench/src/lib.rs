//! Benchmarks of the U-Net: cases ([`cases`]), timing ([`timing`]) and FLOP counts that match
//! the PyTorch reference's ([`flops`]). Run with the `bench` binary; compare with PyTorch with
//! `scripts/bench-vs-pytorch.py`.

pub mod cases;
pub use diffusion::unet::flops;
pub mod timing;
