//! Whole folders: importing a diffusers pipeline folder (`model_index.json`, `unet/`,
//! `scheduler/`) or a bare `unet/` folder into our model and config, and exporting ours as a
//! pipeline folder that `DDPMPipeline.from_pretrained` loads.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use diffusion::weights::{load_model_from_bytes, weights_to_bytes};
use diffusion::{ModelConfig, NoiseScheduleConfig, PredictionType, UNet};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::names;
use crate::scheduler_config;
use crate::tensors::{self, StoredDtype};
use crate::unet_config::{DiffusersUNetConfig, DIFFUSERS_VERSION};

/// The weights file of a `UNet2DModel` folder.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// A model read from a diffusers folder.
pub struct Imported {
    /// Our config: U-Net, schedule, prediction type and clipping.
    pub config: ModelConfig,
    /// The model, on the device it was loaded to.
    pub model: UNet,
    /// The dtype the weights were stored in.
    pub stored: StoredDtype,
    /// Things the user should know (sampling settings not carried over, a default schedule).
    pub notes: Vec<String>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| artifacts::IoError::new(path, e).into())
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Where the U-Net and scheduler configs of `dir` are.
fn locate(dir: &Path) -> Result<(PathBuf, Option<PathBuf>, Vec<String>)> {
    let mut notes = Vec::new();
    let index = dir.join("model_index.json");
    if index.is_file() {
        let text = read_text(&index)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: shown(&index),
            reason: e.to_string(),
        })?;
        match value.get("unet") {
            Some(Value::Array(v)) if v.get(1).and_then(Value::as_str) == Some("UNet2DModel") => {}
            other => {
                return Err(Error::Unsupported {
                    path: shown(&index),
                    field: "unet".into(),
                    value: other.map(Value::to_string).unwrap_or("absent".into()),
                    why: "a pipeline whose unet is a UNet2DModel (DDPMPipeline, DDIMPipeline)"
                        .into(),
                })
            }
        }
        let scheduler = dir.join("scheduler").join("scheduler_config.json");
        if !scheduler.is_file() {
            notes.push(format!(
                "{} is missing: DDPM's schedule assumed (linear β 1e-4 → 0.02, T = 1000, \
                 ε-prediction, x̂_0 clipped to [-1, 1])",
                scheduler.display()
            ));
        }
        return Ok((
            dir.join("unet"),
            Some(scheduler).filter(|p| p.is_file()),
            notes,
        ));
    }
    if dir.join("config.json").is_file() {
        let sibling = dir
            .parent()
            .map(|p| p.join("scheduler").join("scheduler_config.json"));
        let scheduler = sibling.filter(|p| p.is_file());
        if scheduler.is_none() {
            notes.push(format!(
                "{} has no ../scheduler/scheduler_config.json: DDPM's schedule assumed (linear β \
                 1e-4 → 0.02, T = 1000, ε-prediction, x̂_0 clipped to [-1, 1])",
                dir.display()
            ));
        }
        return Ok((dir.to_path_buf(), scheduler, notes));
    }
    Err(Error::Config {
        path: shown(dir),
        reason: "neither a pipeline folder (model_index.json) nor a UNet2DModel folder \
                 (config.json + diffusion_pytorch_model.safetensors)"
            .into(),
    })
}

/// The weights file of a UNet folder: the plain one, or the `fp16` variant the Hub also uses.
fn weights_file(unet_dir: &Path) -> Result<PathBuf> {
    for name in [WEIGHTS_FILE, "diffusion_pytorch_model.fp16.safetensors"] {
        let p = unet_dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let bin = unet_dir.join("diffusion_pytorch_model.bin");
    let reason = if bin.is_file() {
        "has only diffusion_pytorch_model.bin, a PyTorch pickle, which this toolkit does not \
         unpickle; convert it once to safetensors (docs/diffusers.md shows how)"
    } else {
        "has no diffusion_pytorch_model.safetensors"
    };
    Err(Error::Weights {
        path: shown(unet_dir),
        reason: reason.into(),
    })
}

/// Our tensor names and shapes for `config`: the module paths of a model built lazily, so no
/// parameter is initialised (a 36 M-parameter model would be filled with random values only to
/// be overwritten).
fn expected_tensors(config: &ModelConfig, device: &Device) -> Result<Vec<(String, Vec<usize>)>> {
    struct Shapes {
        path: Vec<String>,
        found: Vec<(String, Vec<usize>)>,
    }
    impl burn::module::ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.found
                .push((self.path.join("."), param.lazy_shape().dims::<D>().to_vec()));
        }
    }
    let model = config.unet.init(device)?;
    let mut shapes = Shapes {
        path: Vec::new(),
        found: Vec::new(),
    };
    burn::module::Module::visit(&model, &mut shapes);
    let mut v = shapes.found;
    v.sort();
    Ok(v)
}

/// Reads a diffusers pipeline folder (or a bare `unet/` folder) into our model on `device`.
pub fn import(dir: &Path, device: &Device) -> Result<Imported> {
    let (unet_dir, scheduler, mut notes) = locate(dir)?;
    let unet_json = unet_dir.join("config.json");
    let diffusers_unet =
        DiffusersUNetConfig::from_json(&read_text(&unet_json)?, &shown(&unet_json))?;
    let unet = diffusers_unet.to_ours(&shown(&unet_json))?;
    for field in &diffusers_unet.ignored {
        notes.push(format!(
            "{}: field `{field}` is not a UNet2DModel argument in diffusers {DIFFUSERS_VERSION}; ignored, as diffusers ignores it",
            unet_json.display()
        ));
    }
    let facts = match &scheduler {
        Some(p) => scheduler_config::read(&read_text(p)?, &shown(p))?,
        None => scheduler_config::SchedulerFacts {
            schedule: NoiseScheduleConfig::default(),
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            notes: Vec::new(),
        },
    };
    notes.extend(facts.notes);
    let mut config = ModelConfig::new(unet);
    config.schedule = facts.schedule;
    config.prediction_type = facts.prediction_type;
    config.clip_sample = (!facts.clip_sample).then_some(false);
    config.clip_sample_range = (facts.clip_sample_range != 1.0).then_some(facts.clip_sample_range);
    if let Some(n) = config.unet.num_classes {
        notes.push(format!(
            "class-conditional: rows 0–{} of the class embedding are the classes, row {n} (the \
             last) is taken as the null class of classifier-free guidance",
            n - 1
        ));
    }
    let weights_path = weights_file(&unet_dir)?;
    let bytes =
        std::fs::read(&weights_path).map_err(|e| artifacts::IoError::new(&weights_path, e))?;
    let fail = |reason: String| Error::Weights {
        path: shown(&weights_path),
        reason,
    };
    let (theirs, stored) = tensors::read(&bytes).map_err(fail)?;
    drop(bytes);
    let expected = expected_tensors(&config, device)?;
    let ours = names::to_ours(&expected, &theirs).map_err(fail)?;
    drop(theirs);
    let ours_bytes = tensors::write(&ours, false, &[]).map_err(fail)?;
    drop(ours);
    let model = load_model_from_bytes(&config, ours_bytes, &shown(&weights_path), device)?;
    Ok(Imported {
        config,
        model,
        stored,
        notes,
    })
}

/// Writes `model` as a diffusers pipeline folder `out_dir` (`model_index.json`,
/// `unet/config.json`, `unet/diffusion_pytorch_model.safetensors` in f32 or f16,
/// `scheduler/scheduler_config.json`), each file atomically. The same model gives the same
/// bytes.
pub fn export(
    model: &UNet,
    config: &ModelConfig,
    out_dir: &Path,
    half_precision: bool,
) -> Result<()> {
    let out = shown(out_dir);
    let cannot = |reason: String| Error::Config {
        path: out.clone(),
        reason: format!("diffusers cannot express this model: {reason}"),
    };
    let unet = DiffusersUNetConfig::from_ours(&config.unet).map_err(cannot)?;
    let scheduler = scheduler_config::write(
        &config.schedule,
        config.prediction_type,
        config.clip_range(),
    )
    .map_err(cannot)?;
    let ours = tensors::read(&weights_to_bytes(model, false)?).map_err(|e| Error::Weights {
        path: "<model>".into(),
        reason: e,
    })?;
    let theirs = names::to_diffusers(&ours.0).map_err(cannot)?;
    let bytes = tensors::write(&theirs, half_precision, &[("format", "pt")]).map_err(cannot)?;
    let index = serde_json::json!({
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    });
    let mut index = serde_json::to_string_pretty(&index).expect("JSON");
    index.push('\n');
    for sub in ["unet", "scheduler"] {
        let d = out_dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| artifacts::IoError::new(&d, e))?;
    }
    artifacts::write_atomic(&out_dir.join("unet").join(WEIGHTS_FILE), &bytes)?;
    artifacts::write_atomic(
        &out_dir.join("unet").join("config.json"),
        unet.to_json().as_bytes(),
    )?;
    artifacts::write_atomic(
        &out_dir.join("scheduler").join("scheduler_config.json"),
        scheduler.as_bytes(),
    )?;
    artifacts::write_atomic(&out_dir.join("model_index.json"), index.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_names_are_the_saved_ones() {
        // The lazy visitor's paths and shapes are exactly what the model saves.
        let device = Device::flex();
        let mut unet = diffusion::UNetConfig::new(3, 16, 16, vec![1, 2], vec![8])
            .with_num_res_blocks(1)
            .with_num_classes(Some(2))
            .with_norm_groups(8);
        unet.mid_attention_norm_groups = Some(0);
        let config = ModelConfig::new(unet);
        let expected = expected_tensors(&config, &device).unwrap();
        let bytes = weights_to_bytes(&config.unet.init(&device).unwrap(), false).unwrap();
        let (saved, _) = tensors::read(&bytes).unwrap();
        let saved: Vec<(String, Vec<usize>)> =
            saved.into_iter().map(|(n, t)| (n, t.shape)).collect();
        assert_eq!(expected, saved);
    }
}
