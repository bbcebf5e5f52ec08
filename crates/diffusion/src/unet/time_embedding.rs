//! Sinusoidal timestep embedding (Vaswani et al. 2017, §3.5, as used by Ho et al. 2020).
//!
//! For `dim` = 2h channels and timestep t:
//!
//! emb(t)_i = sin(t · f_i), emb(t)_{h+i} = cos(t · f_i), f_i = exp(−ln(10000) · i / (h − 1)),
//! i = 0..h
//!
//! so frequencies run geometrically from 1 down to 1/10000 (the constant 10000 is the
//! "max period"; the `h − 1` denominator is DDPM's `get_timestep_embedding`). An odd `dim` gets
//! one zero column. The embedding is computed on the host in `f64` with the pure-Rust `libm`, so
//! every backend receives identical values.

use burn::tensor::{Device, Tensor, TensorData};

/// The max period of the sinusoids.
pub const MAX_PERIOD: f64 = 10_000.0;

/// Host-side sinusoidal embedding of `timesteps` (one row each) with `dim` columns.
///
/// # Shapes
/// - output: `[timesteps.len(), dim]`
pub fn timestep_embedding(timesteps: &[f64], dim: usize, device: &Device) -> Tensor<2> {
    let half = dim / 2;
    let denom = (half.max(2) - 1) as f64;
    let freqs: Vec<f64> = (0..half)
        .map(|i| libm::exp(-libm::log(MAX_PERIOD) * i as f64 / denom))
        .collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        data.extend(freqs.iter().map(|f| libm::sin(t * f) as f32));
        data.extend(freqs.iter().map(|f| libm::cos(t * f) as f32));
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [timesteps.len(), dim]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula() {
        let device = Device::flex();
        let e = timestep_embedding(&[0.0, 1.0, 500.0], 8, &device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        // t = 0: sin = 0, cos = 1.
        assert_eq!(&e[0..8], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        // t = 1, h = 4: frequencies 1, 10^(−4/3), 10^(−8/3), 10^(−4).
        let f = [1.0f64, 10f64.powf(-4.0 / 3.0), 10f64.powf(-8.0 / 3.0), 1e-4];
        for i in 0..4 {
            assert!((e[8 + i] as f64 - f[i].sin()).abs() < 1e-7);
            assert!((e[12 + i] as f64 - f[i].cos()).abs() < 1e-7);
            assert!((e[16 + i] as f64 - (500.0 * f[i]).sin()).abs() < 1e-6);
        }
        let odd = timestep_embedding(&[3.0], 5, &device);
        assert_eq!(odd.dims(), [1, 5]);
    }
}
