//! Picking the Burn device at run time among the backends compiled in.

use burn::tensor::Device;

use crate::error::{Result, TrainError};

/// Parses `cpu`, `wgpu` or `cuda[:N]`. The CPU backend is Burn's `flex` (pure Rust, SIMD +
/// rayon), which is always compiled in; `wgpu` and `cuda` need the cargo features of the same
/// names.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => wgpu_device(),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let index = match name.strip_prefix("cuda:") {
                Some(i) => i.parse::<usize>().map_err(|_| {
                    TrainError::Invalid(format!("bad CUDA device index in `{name}`"))
                })?,
                None => 0,
            };
            cuda_device(index)
        }
        other => Err(TrainError::Invalid(format!(
            "unknown device `{other}` (expected cpu, wgpu or cuda[:N])"
        ))),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device> {
    Err(TrainError::Invalid(
        "this build has no wgpu backend: rebuild with `--features wgpu`".into(),
    ))
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device> {
    Err(TrainError::Invalid(
        "this build has no CUDA backend: rebuild with `--features cuda`".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device("tpu")
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
        assert!(parse_device("cuda:x").is_err());
    }
}
