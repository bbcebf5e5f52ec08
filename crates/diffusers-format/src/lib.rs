//! Hugging Face diffusers' `UNet2DModel` pipelines in and out of the toolkit, exactly.
//!
//! - [`import`] reads a pipeline folder (`model_index.json`, `unet/`, `scheduler/`) or a bare
//!   `unet/` folder, f32, f16 or bf16 weights, and gives our [`diffusion::UNet`] and
//!   [`diffusion::ModelConfig`]: the U-Net's switches, the training noise schedule, the
//!   prediction type and x̂_0 clipping. The result samples like any model trained here.
//! - [`export`] writes ours as a `DDPMPipeline` folder that `DDPMPipeline.from_pretrained` and
//!   `UNet2DModel.from_pretrained(DIR/"unet")` load with the same forward pass; a class
//!   embedding keeps its null row last (`num_class_embeds` = classes + 1).
//!
//! The layers correspond one to one ([`names`]); configs translate field by field
//! ([`unet_config`], [`scheduler_config`]), and whatever our U-Net cannot express is an
//! [`Error::Unsupported`] naming the field. Tested against diffusers 0.42.1's own outputs
//! (`scripts/make-diffusers-fixtures.py`, `tests/diffusers.rs`).

pub mod error;
pub mod folder;
pub mod names;
pub mod scheduler_config;
pub mod tensors;
pub mod unet_config;

pub use error::{Error, Result};
pub use folder::{export, import, Imported, WEIGHTS_FILE};
pub use tensors::StoredDtype;
pub use unet_config::{DiffusersUNetConfig, DIFFUSERS_VERSION};
