//! The DDPM U-Net (Ho et al. 2020, Appendix B; the PixelCNN++ backbone), class-conditional
//! for classifier-free guidance.
//!
//! sinusoidal t-embedding → Linear(ch, 4ch) → SiLU → Linear(4ch, 4ch) (+ class embedding with a
//! learned null row) → conv_in → per level: `num_res_blocks` [`ResBlock`]s (+ [`AttentionBlock`]
//! where the resolution is listed) and a strided-conv [`Downsample`] (not on the last level) →
//! middle ResBlock, attention, ResBlock → up path with `num_res_blocks + 1` ResBlocks per level
//! on the concatenated skips and nearest + conv [`Upsample`] → GroupNorm → SiLU → conv_out.
//!
//! The same design, parameter for parameter, is `../shared/bench/ref_unet.py`.

mod attention;
mod config;
pub mod flops;
mod model;
mod res_block;
mod resample;
mod time_embedding;

pub use attention::{AttentionBlock, AttentionBlockConfig};
pub use config::UNetConfig;
#[cfg(test)]
pub(crate) use model::randomize;
pub use model::{Level, UNet};
pub use res_block::{ResBlock, ResBlockConfig, TimeMode};
pub use resample::{Downsample, Upsample};
pub use time_embedding::{timestep_embedding, MAX_PERIOD};
