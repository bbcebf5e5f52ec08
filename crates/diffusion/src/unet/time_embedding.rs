//! Sinusoidal timestep embedding (Vaswani et al. 2017, §3.5, as used by Ho et al. 2020).
//!
//! For `dim` = 2h channels and timestep t:
//!
//! emb(t)_i = sin(t · f_i), emb(t)_{h+i} = cos(t · f_i), f_i = exp(−ln(10000) · i / (h − s)),
//! i = 0..h
//!
//! so frequencies run geometrically from 1 down to about 1/10000 (the constant 10000 is the
//! "max period"). DDPM's `get_timestep_embedding` has the shift s = 1 and (sin, cos) order;
//! diffusers' `Timesteps` has both as switches (`freq_shift`, default 0, and `flip_sin_to_cos`,
//! default true, which puts the cosines first). An odd `dim` gets one zero column. The embedding is computed on the host in `f64` with the pure-Rust `libm`, so
//! every backend receives identical values.

use burn::tensor::{Device, Tensor, TensorData};

/// The max period of the sinusoids.
pub const MAX_PERIOD: f64 = 10_000.0;

/// Host-side sinusoidal embedding of `timesteps` (one row each) with `dim` columns, cosines
/// first if `flip_sin_to_cos`, frequencies shifted by `freq_shift` (DDPM: false, 1).
///
/// # Shapes
/// - output: `[timesteps.len(), dim]`
pub fn timestep_embedding(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    // A single frequency (h = 1) is 1 whatever the shift: DDPM's h − 1 would divide by zero.
    let denom = if half > 1 {
        half as f64 - freq_shift
    } else {
        1.0
    };
    let freqs: Vec<f64> = (0..half)
        .map(|i| libm::exp(-libm::log(MAX_PERIOD) * i as f64 / denom))
        .collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let sin = freqs.iter().map(|f| libm::sin(t * f) as f32);
        let cos = freqs.iter().map(|f| libm::cos(t * f) as f32);
        if flip_sin_to_cos {
            data.extend(cos);
            data.extend(sin);
        } else {
            data.extend(sin);
            data.extend(cos);
        }
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
        let e = timestep_embedding(&[0.0, 1.0, 500.0], 8, false, 1.0, &device)
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
        let odd = timestep_embedding(&[3.0], 5, false, 1.0, &device);
        assert_eq!(odd.dims(), [1, 5]);
    }

    #[test]
    fn diffusers_switches_flip_and_shift() {
        // diffusers' defaults: cosines first, f_i = exp(−ln(10⁴) · i / h).
        let device = Device::flex();
        let e = timestep_embedding(&[7.0], 8, true, 0.0, &device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for i in 0..4 {
            let f = (-(10_000f64.ln()) * i as f64 / 4.0).exp();
            assert!((e[i] as f64 - (7.0 * f).cos()).abs() < 1e-6);
            assert!((e[4 + i] as f64 - (7.0 * f).sin()).abs() < 1e-6);
        }
    }
}
