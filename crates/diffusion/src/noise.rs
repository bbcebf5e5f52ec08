//! Portable seeded Gaussian noise on a device: [`NoiseRng`] (from `portable-rng`, the same
//! stream on every platform) drawn on the host and uploaded, never a backend's RNG.

use burn::tensor::{Device, Tensor, TensorData};
pub use portable_rng::{NoiseRng, NoiseRngState};

/// Noise tensors from a [`NoiseRng`].
pub trait NormalTensor {
    /// A tensor of standard-normal noise of `shape` on `device`: the next `shape`'s product
    /// values of the stream, row-major.
    fn normal_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D>;
}

impl NormalTensor for NoiseRng {
    fn normal_tensor<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.normal_vec(n), shape), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_identical_tensors_from_the_host_stream() {
        let device = Device::flex();
        let a = NoiseRng::new(7).normal_tensor([2, 1, 4, 4], &device);
        let b = NoiseRng::new(7).normal_tensor([2, 1, 4, 4], &device);
        let c = NoiseRng::new(8).normal_tensor([2, 1, 4, 4], &device);
        assert_eq!(a.to_data(), b.to_data());
        assert_ne!(a.to_data(), c.to_data());
        let host = NoiseRng::new(7).normal_vec(32);
        assert_eq!(a.into_data().try_to_vec::<f32>().unwrap(), host);
    }
}
