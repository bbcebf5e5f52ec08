//! Picking the Burn device at run time among the backends compiled in.

use burn::tensor::Device;

use crate::error::{Result, TrainError};

/// Parses `cpu`, `wgpu` or `cuda[:N]`. The CPU backend is Burn's `flex` (pure Rust, SIMD +
/// rayon), which is always compiled in; `wgpu` and `cuda` need the cargo features of the same
/// names.
///
/// The chosen backend also becomes Burn's default device for this process (see
/// [`make_default`]).
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" | "flex" => Device::flex(),
        "wgpu" => wgpu_device()?,
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let index = match name.strip_prefix("cuda:") {
                Some(i) => i.parse::<usize>().map_err(|_| {
                    TrainError::Invalid(format!("bad CUDA device index in `{name}`"))
                })?,
                None => 0,
            };
            cuda_device(index)?
        }
        other => {
            return Err(TrainError::Invalid(format!(
                "unknown device `{other}` (expected cpu, wgpu or cuda[:N])"
            )))
        }
    };
    make_default(&device);
    Ok(device)
}

/// Parses the devices of data-parallel training (`--devices`): a comma-separated list of
/// `cpu` or `cuda:N` names (one rank each, in order), or `all` (every CUDA device present).
/// Every device must be of one kind; a CUDA device may appear once (two ranks on one GPU would
/// share its memory and its NCCL rank); `wgpu` has no collective operations in Burn.
pub fn parse_devices(list: &str) -> Result<Vec<Device>> {
    let names: Vec<String> = if list.trim() == "all" {
        all_cuda_names()?
    } else {
        list.split(',').map(|n| n.trim().to_string()).collect()
    };
    if names.iter().any(String::is_empty) {
        return Err(TrainError::Invalid(format!(
            "--devices `{list}`: an empty name"
        )));
    }
    fn kind(n: &str) -> &str {
        if n == "cpu" || n == "flex" {
            "cpu"
        } else {
            n.split(':').next().unwrap_or(n)
        }
    }
    if let Some(other) = names.iter().find(|n| kind(n) != kind(&names[0])) {
        return Err(TrainError::Invalid(format!(
            "--devices `{list}` mixes device kinds ({} and {other}): every rank must run on the same backend",
            names[0]
        )));
    }
    if kind(&names[0]) == "wgpu" {
        return Err(TrainError::Invalid(
            "--devices: wgpu has no collective operations in Burn 0.22 (cpu or cuda:N)".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in names.iter().filter(|n| kind(n) == "cuda") {
        let canonical = if n.as_str() == "cuda" {
            "cuda:0"
        } else {
            n.as_str()
        };
        if !seen.insert(canonical.to_string()) {
            return Err(TrainError::Invalid(format!(
                "--devices `{list}` names {canonical} twice: one rank per GPU"
            )));
        }
    }
    let devices = names
        .iter()
        .map(|n| parse_device(n))
        .collect::<Result<Vec<_>>>()?;
    Ok(devices)
}

/// `cuda:0`, `cuda:1`, … for every CUDA device present.
#[cfg(feature = "cuda")]
fn all_cuda_names() -> Result<Vec<String>> {
    let n = cuda::probe()?.len();
    if n == 0 {
        return Err(TrainError::Invalid(
            "--devices all: no CUDA device found".into(),
        ));
    }
    Ok((0..n).map(|i| format!("cuda:{i}")).collect())
}

#[cfg(not(feature = "cuda"))]
fn all_cuda_names() -> Result<Vec<String>> {
    cuda_device(0).map(|_| Vec::new())
}

/// Makes `device`'s backend Burn's default device. Burn creates some tensors on its default
/// device rather than the caller's (a resumed run's AdamW state, in
/// `ModuleOptimizer::load_record`), and that default is the first compiled backend in Burn's
/// order, CUDA before the CPU, unless the `BURN_DEVICE` variable names one: without this, a build
/// with CUDA would put a CPU run's optimiser state on the GPU, or panic on a machine without one.
/// Called while a command parses its arguments and before a checkpoint is loaded, when no other
/// thread reads the environment.
pub fn make_default(device: &Device) {
    let backend = if *device == Device::flex() {
        "flex"
    } else if cfg!(feature = "cuda") && is_cuda(device) {
        "cuda"
    } else {
        "wgpu"
    };
    if std::env::var("BURN_DEVICE").ok().as_deref() != Some(backend) {
        std::env::set_var("BURN_DEVICE", backend);
    }
}

/// Whether `device` is a CUDA device.
#[cfg(feature = "cuda")]
pub fn is_cuda(device: &Device) -> bool {
    (0..16).any(|i| *device == Device::cuda(i))
}

/// Whether `device` is a CUDA device (never, in a build without CUDA).
#[cfg(not(feature = "cuda"))]
pub fn is_cuda(_device: &Device) -> bool {
    false
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
    // Burn's CUDA runtime panics on its first use when the driver, the device or NVRTC is
    // missing; probing here first turns each of those into one error line.
    let devices = cuda::probe()?;
    if index >= devices.len() {
        return Err(TrainError::Invalid(format!(
            "CUDA device {index} does not exist ({} found)",
            devices.len()
        )));
    }
    cuda::check_nvrtc()?;
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_index: usize) -> Result<Device> {
    Err(TrainError::Invalid(
        "this build has no CUDA backend: rebuild without `--no-default-features` \
         (or with `--features cuda`)"
            .into(),
    ))
}

/// One backend compiled into this build, with the devices it can see.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendReport {
    /// The `--device` name: `cpu`, `wgpu` or `cuda`.
    pub name: &'static str,
    /// What runs it.
    pub description: String,
    /// The devices found, as `--device` names with a description; empty when none.
    pub devices: Vec<(String, String)>,
    /// Why no device is usable, when none is.
    pub unavailable: Option<String>,
}

/// The backends compiled in and the devices each can see (`trainer devices`). Probing never
/// panics: a missing driver or GPU is reported as the backend's `unavailable` reason.
pub fn list_backends() -> Vec<BackendReport> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![BackendReport {
        name: "cpu",
        description: "Burn flex with this toolkit's CPU kernels".into(),
        devices: vec![("cpu".into(), format!("{threads} threads"))],
        unavailable: None,
    }];
    if cfg!(feature = "wgpu") {
        out.push(BackendReport {
            name: "wgpu",
            description: "Burn wgpu (Vulkan, Metal or DX12)".into(),
            devices: vec![(
                "wgpu".into(),
                "the default adapter, chosen at first use".into(),
            )],
            unavailable: None,
        });
    }
    #[cfg(feature = "cuda")]
    {
        let (devices, unavailable) = match cuda::probe().and_then(|d| {
            cuda::check_nvrtc()?;
            Ok(d)
        }) {
            Ok(d) if d.is_empty() => (d, Some("the CUDA driver sees no device".into())),
            Ok(d) => (d, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        out.push(BackendReport {
            name: "cuda",
            description: "Burn CUDA (CubeCL, kernels compiled by NVRTC)".into(),
            devices: devices
                .into_iter()
                .enumerate()
                .map(|(i, d)| (format!("cuda:{i}"), d))
                .collect(),
            unavailable,
        });
    }
    out
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::error::{Result, TrainError};
    use cudarc::driver::{result, sys};

    /// The CUDA devices the driver sees, described; an error when the driver cannot be loaded
    /// or initialised.
    pub(super) fn probe() -> Result<Vec<String>> {
        // SAFETY: only tries to dlopen each candidate library name.
        if !unsafe { sys::is_culib_present() } {
            return Err(TrainError::Invalid(
                "no CUDA driver: libcuda could not be loaded (--device cuda needs an NVIDIA GPU \
                 and its driver)"
                    .into(),
            ));
        }
        let failed = |what: &str, e: result::DriverError| {
            TrainError::Invalid(format!("CUDA driver: {what} failed: {e}"))
        };
        result::init().map_err(|e| failed("cuInit", e))?;
        let count = result::device::get_count().map_err(|e| failed("cuDeviceGetCount", e))?;
        (0..count)
            .map(|i| {
                let dev = result::device::get(i).map_err(|e| failed("cuDeviceGet", e))?;
                let name =
                    result::device::get_name(dev).map_err(|e| failed("cuDeviceGetName", e))?;
                // SAFETY: `dev` came from cuDeviceGet.
                let (mem, major, minor) = unsafe {
                    use sys::CUdevice_attribute::*;
                    (
                        result::device::total_mem(dev)
                            .map_err(|e| failed("cuDeviceTotalMem", e))?,
                        result::device::get_attribute(
                            dev,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                        )
                        .map_err(|e| failed("cuDeviceGetAttribute", e))?,
                        result::device::get_attribute(
                            dev,
                            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                        )
                        .map_err(|e| failed("cuDeviceGetAttribute", e))?,
                    )
                };
                Ok(format!(
                    "{name}, {:.1} GiB, compute capability {major}.{minor}",
                    mem as f64 / (1u64 << 30) as f64
                ))
            })
            .collect()
    }

    /// CubeCL compiles this build's CUDA kernels with NVRTC at run time, against the CUDA
    /// headers of `$CUDA_PATH/include` (or /usr/local/cuda, /opt/cuda); it panics at the first
    /// kernel when either is missing.
    pub(super) fn check_nvrtc() -> Result<()> {
        // SAFETY: only tries to dlopen each candidate library name.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(TrainError::Invalid(
                "NVRTC (libnvrtc) could not be loaded: CUDA kernels are compiled by NVRTC at run \
                 time; install the CUDA toolkit's NVRTC or add its lib folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        match cubecl_cuda::install::cuda_path() {
            Some(root) if root.join("include").join("cuda_fp16.h").is_file() => Ok(()),
            Some(root) => Err(TrainError::Invalid(format!(
                "no CUDA headers in {}: NVRTC compiles the kernels against \
                 $CUDA_PATH/include (cuda_fp16.h and friends); set CUDA_PATH to a CUDA toolkit",
                root.join("include").display()
            ))),
            None => Err(TrainError::Invalid(
                "no CUDA toolkit found (CUDA_PATH is unset and /usr/local/cuda does not exist): \
                 NVRTC compiles the kernels against $CUDA_PATH/include"
                    .into(),
            )),
        }
    }
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

    #[test]
    fn lists_the_cpu_first_and_every_compiled_backend() {
        let backends = list_backends();
        assert_eq!(backends[0].name, "cpu");
        assert_eq!(backends[0].devices[0].0, "cpu");
        assert_eq!(
            backends.iter().any(|b| b.name == "cuda"),
            cfg!(feature = "cuda")
        );
        assert_eq!(
            backends.iter().any(|b| b.name == "wgpu"),
            cfg!(feature = "wgpu")
        );
    }
}
