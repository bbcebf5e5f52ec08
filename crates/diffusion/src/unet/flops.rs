//! FLOP counts of the U-Net forward pass, counted the way PyTorch's `FlopCounterMode` counts
//! them in `../shared/bench/ref_unet.py`: 2 per multiply–add of every convolution, linear layer
//! and attention matmul (QKᵀ and AV); normalisation, activations, embeddings and bias adds
//! count zero. A training step (forward + backward) is 3× the forward, less the two input
//! gradients autograd never computes (of the image into `conv_in` and of the sinusoidal
//! embedding into the first time-MLP layer).

use super::{TimeMode, UNetConfig};

/// Forward FLOPs per image.
pub fn unet_forward_flops(c: &UNetConfig) -> f64 {
    let ch = c.base_channels as f64;
    let temb = c.emb_channels() as f64;
    let film = if c.time_mode == TimeMode::Film {
        2.0
    } else {
        1.0
    };
    let conv = |cin: f64, cout: f64, k: f64, hw: f64| 2.0 * cin * cout * k * k * hw;
    // Time MLP: ch → 4ch → 4ch.
    let mut f = 2.0 * ch * temb + 2.0 * temb * temb;
    let res_block = |cin: f64, cout: f64, hw: f64| {
        conv(cin, cout, 3.0, hw)
            + 2.0 * temb * cout * film
            + conv(cout, cout, 3.0, hw)
            + if cin != cout {
                conv(cin, cout, 1.0, hw)
            } else {
                0.0
            }
    };
    let attention =
        |ch: f64, hw: f64| conv(ch, 3.0 * ch, 1.0, hw) + 4.0 * hw * hw * ch + conv(ch, ch, 1.0, hw);
    let mut res = c.resolution;
    let hw = |r: usize| (r * r) as f64;
    f += conv(c.in_channels as f64, ch, 3.0, hw(res));
    let mut skips = vec![ch];
    let mut cur = ch;
    let channels = c.level_channels();
    let levels = channels.len();
    for (i, &out) in channels.iter().enumerate() {
        let out = out as f64;
        for _ in 0..c.num_res_blocks {
            f += res_block(cur, out, hw(res));
            cur = out;
            if c.attention_resolutions.contains(&res) {
                f += attention(cur, hw(res));
            }
            skips.push(cur);
        }
        if i + 1 != levels {
            let r2 = res.div_ceil(2);
            f += conv(cur, cur, 3.0, hw(r2));
            res = r2;
            skips.push(cur);
        }
    }
    f += 2.0 * res_block(cur, cur, hw(res));
    if c.has_mid_attention() {
        f += attention(cur, hw(res));
    }
    for (i, &out) in channels.iter().enumerate().rev() {
        let out = out as f64;
        for _ in 0..=c.num_res_blocks {
            let skip = skips.pop().expect("skip");
            f += res_block(cur + skip, out, hw(res));
            cur = out;
            if c.up_attention_resolutions().contains(&res) {
                f += attention(cur, hw(res));
            }
        }
        if i != 0 {
            res *= 2;
            f += conv(cur, cur, 3.0, hw(res));
        }
    }
    f + conv(cur, c.in_channels as f64, 3.0, hw(res))
}

/// Training-step FLOPs per image (forward + backward).
pub fn unet_train_flops(c: &UNetConfig) -> f64 {
    let ch = c.base_channels as f64;
    let image_grad = 2.0 * c.in_channels as f64 * ch * 9.0 * (c.resolution * c.resolution) as f64;
    let embedding_grad = 2.0 * ch * c.emb_channels() as f64;
    3.0 * unet_forward_flops(c) - image_grad - embedding_grad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_equal_the_pytorch_flop_counter() {
        // ../shared/bench/reference-results-2026-11-28.json, "flops" (FlopCounterMode).
        let s = UNetConfig::mnist().with_time_mode(TimeMode::Add);
        assert_eq!(unet_forward_flops(&s), 554_397_184.0);
        assert_eq!(unet_train_flops(&s), 1_662_731_776.0);
        let m = UNetConfig::new(3, 32, 64, vec![1, 2, 2, 2], vec![16])
            .with_num_classes(Some(10))
            .with_time_mode(TimeMode::Add);
        assert_eq!(unet_forward_flops(&m), 3_198_418_944.0);
        assert_eq!(unet_train_flops(&m), 9_591_685_120.0);
        assert_eq!(
            unet_forward_flops(&UNetConfig::cifar10_ddpm()),
            12_443_713_536.0
        );
        // FiLM doubles the time projections only.
        let film = unet_forward_flops(&UNetConfig::mnist());
        assert!(film > 554_397_184.0 && film < 1.01 * 554_397_184.0);
    }
}
