//! Is the U-Net forward batch-invariant on the CPU kernels? A sample's output must not depend on
//! which other samples share its batch, bit for bit. Step-level batching in the server (issue 16)
//! runs different requests in one forward and promises the same pixels as serving each alone;
//! this is the property that promise rests on.
//!
//! It is, since the convolution's forward products split their depth themselves
//! (`flex_kernels` `conv2d/gemm.rs`): `gemm` chose its depth block from the product's whole shape,
//! so a 7 × 7 image alone (n = 49 ≤ 64: blocks of 512) and grouped with others (n ≥ 98: blocks
//! from the cache sizes) summed k = 576 and 1152 differently, 6.0e-7 apart for every batch of 2
//! to 40. The same holds with the direct convolution switched off (the path without AVX-512 and
//! in the browser). Burn's own ops (`with_burn_ops`) are batch-invariant too.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use diffusion::sampler::Denoiser;
use diffusion::weights::load_model;
use diffusion::NoiseRng;

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn a_samples_output_does_not_depend_on_its_batch() {
    let device = Device::flex();
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights/mnist.safetensors");
    let (model, config) = load_model(&weights, &device).unwrap();
    let [c, h, w] = config.unet.image_shape();
    let per = c * h * w;
    let n = 40; // up to a guided batch of 20 requests
    let x = NoiseRng::new(3).normal_vec(n * per);
    let ts: Vec<f64> = (0..n).map(|i| ((i * 37) % 1000) as f64).collect();
    let null = config.unet.num_classes.unwrap();
    let labels: Vec<usize> = (0..n).map(|i| (i * 7) % (null + 1)).collect();
    let forward = |idx: &[usize]| {
        let xs: Vec<f32> = idx
            .iter()
            .flat_map(|&i| x[i * per..(i + 1) * per].iter().copied())
            .collect();
        let t: Vec<f64> = idx.iter().map(|&i| ts[i]).collect();
        let l: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
        let input = Tensor::from_data(TensorData::new(xs, [idx.len(), c, h, w]), &device);
        values(model.predict(input, &t, Some(&l)))
    };
    let alone: Vec<Vec<f32>> = (0..n).map(|i| forward(&[i])).collect();
    for batch in [
        (0..n).collect::<Vec<_>>(),
        (0..16).collect(),
        vec![5, 1, 9],
        (0..n).rev().collect(),
        (0..n).step_by(3).collect(),
    ] {
        let out = forward(&batch);
        for (k, &i) in batch.iter().enumerate() {
            let got = &out[k * per..(k + 1) * per];
            let max = got
                .iter()
                .zip(&alone[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                got == alone[i].as_slice(),
                "sample {i} at position {k} of a batch of {}: max |Δ| {max:e} against it alone",
                batch.len()
            );
        }
    }
}
