//! What the editing tests share.

use burn::tensor::Device;
use diffusion::{ModelConfig, UNet, UNetConfig};

/// A tiny class-conditional model (8×8 grey, 3 classes, no dropout) with seeded random
/// weights, so every layer is active.
pub fn tiny() -> (UNet, ModelConfig) {
    let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![4])
        .with_num_res_blocks(1)
        .with_num_classes(Some(3))
        .with_dropout(0.0);
    let config = ModelConfig::new(unet);
    let model = config
        .unet
        .init(&Device::flex())
        .unwrap()
        .randomize(2, 0.05);
    (model, config)
}
