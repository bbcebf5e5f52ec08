//! Offline stand-in for `cubecl-llvm 0.11.3`: the items `cubecl-cuda 0.11.3` names, without LLVM.
//!
//! `cubecl-cuda` always compiles both of its kernel compilers and picks one at run time; its
//! `cpp` feature makes CUDA C++ through NVRTC the default, so with that feature the LLVM compiler
//! is never constructed. This crate gives the LLVM side's types so that `cubecl-cuda` builds, and
//! makes every LLVM compilation fail with an error that says why. Patched in only by
//! the workspace's `[patch.crates-io]`; see docs/cli.md's CUDA section.

use cubecl_core::ir::amd::GfxArch;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::ir::DeviceProperties;
use cubecl_core::prelude::KernelDefinition;
use cubecl_core::{CompilationError, Compiler};
use cubecl_runtime::kernel::BufferIOAttr;
use std::fmt;

/// The message of every LLVM compilation in this build.
pub const NO_LLVM: &str = "this build of cubecl-cuda has no LLVM backend (the offline stand-in \
     for cubecl-llvm is patched in); kernels compile through CUDA C++ and NVRTC, the default \
     with cubecl-cuda's `cpp` feature";

/// Where a kernel would be lowered to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LlvmTarget {
    /// The host CPU.
    #[default]
    Cpu,
    /// AMD GPUs.
    AmdGpu,
    /// NVIDIA GPUs.
    Nvptx,
}

impl LlvmTarget {
    /// Whether the target provides a hardware launch grid.
    pub fn is_gpu(self) -> bool {
        !matches!(self, LlvmTarget::Cpu)
    }
}

/// The options the real compiler takes; only carried here.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// Minimum CPU buffer alignment.
    pub cpu_buffer_alignment: Option<u32>,
    /// AMDGPU architecture.
    pub arch: Option<GfxArch>,
    /// NVPTX architecture.
    pub sm_arch: Option<SmArch>,
    /// PTX version to emit.
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    /// Pass scalars and static metadata in the kernel parameter block.
    pub grid_constants: bool,
}

/// A compiled PTX module. Never made by this crate.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX assembly.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point symbol.
    pub entrypoint: String,
    /// IR for logging and cache keys.
    pub ir: String,
    /// Shared memory required per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// A compiled kernel. Never made by this crate.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    /// PTX for the CUDA driver.
    NvptxCode(NvptxModule),
}

impl fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
        }
    }
}

/// The LLVM kernel compiler: here, one that always refuses.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    /// Where kernels would be lowered to.
    pub target: LlvmTarget,
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: NO_LLVM.to_string(),
            backtrace: cubecl_core::environment::backtrace::BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}

/// NVPTX specifics.
pub mod nvptx {
    /// The PTX ISA version the LLVM backend would emit.
    pub mod ptx_version {
        use std::fmt;

        /// A PTX ISA version (8.7 is `87`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The version the LLVM backend would emit for a driver: none here, because this
            /// build emits no PTX of its own (NVRTC picks its toolkit's version).
            pub fn for_driver(_driver: i32) -> Option<Self> {
                None
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }
    }
}

/// Items shared by the LLVM targets.
pub mod shared {
    /// Device features narrowed to what the LLVM backend lowers.
    pub mod lowered_features {
        use super::super::DeviceProperties;

        /// The GPU target a device's features would be narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            /// NVIDIA GPUs.
            Nvptx,
        }

        /// Leaves `props` as they are: `cubecl-cuda` calls this only when the LLVM backend is
        /// selected, and here that backend compiles nothing, so there is nothing to narrow for.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}
