//! Model weights as safetensors, with the model's config as JSON beside them.
//!
//! A model is two files: `NAME.safetensors` (tensor keys are the module paths, e.g.
//! `down.0.blocks.1.conv1.weight`) and `NAME.json` (a [`ModelConfig`]: U-Net, noise schedule
//! and prediction type). Loading checks the tensors against the config: a missing, extra or
//! wrongly shaped tensor is an [`Error::Weights`] that names it. Files are written atomically
//! (temporary file, then rename), so a crash never leaves a half-written model.

use std::path::{Path, PathBuf};

use artifacts::write_atomic;
use burn::module::Module;
use burn::store::{ApplyResult, FloatCastAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::objective::PredictionType;
use crate::sampler::{AnyScheduler, RePaintSchedulerConfig, SamplerSettings};
use crate::schedule::NoiseScheduleConfig;
use crate::unet::{UNet, UNetConfig};

/// Everything needed to rebuild and sample a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The network.
    pub unet: UNetConfig,
    /// The noise schedule it was trained with.
    pub schedule: NoiseScheduleConfig,
    /// What the network predicts.
    #[serde(default)]
    pub prediction_type: PredictionType,
    /// The name of each class (`class_names[k]` for label k), as the training dataset names
    /// them; display only (the page's class menu, `trainer sample --class NAME`). Absent:
    /// the classes are known by their numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// Whether samplers clip x̂_0 to `[-clip_sample_range, clip_sample_range]`; absent: true
    /// (diffusers' `clip_sample`: data scaled to [-1, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    /// The clipping bound; absent: 1 (diffusers' `clip_sample_range`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f64>,
}

impl ModelConfig {
    /// A config with the default (linear, T = 1000) schedule and ε-prediction.
    pub fn new(unet: UNetConfig) -> Self {
        Self {
            unet,
            schedule: NoiseScheduleConfig::default(),
            prediction_type: PredictionType::Epsilon,
            class_names: None,
            clip_sample: None,
            clip_sample_range: None,
        }
    }

    /// The displayed name of class `k`: its entry in `class_names`, else the number.
    pub fn class_name(&self, k: usize) -> String {
        match &self.class_names {
            Some(names) if k < names.len() => names[k].clone(),
            _ => k.to_string(),
        }
    }

    /// Checks what the network and schedule cannot: one class name per class, none empty or
    /// repeated.
    fn validate_class_names(&self) -> Result<()> {
        let Some(names) = &self.class_names else {
            return Ok(());
        };
        let classes = self.unet.num_classes.unwrap_or(0);
        if names.len() != classes {
            return Err(Error::Config(format!(
                "class_names has {} names for {classes} classes",
                names.len()
            )));
        }
        for (k, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(Error::Config(format!("class_names[{k}] is empty")));
            }
            if names[..k].contains(name) {
                return Err(Error::Config(format!("class name `{name}` appears twice")));
            }
        }
        Ok(())
    }

    /// Parses and validates a config JSON string; `origin` names it in errors.
    pub fn from_json(json: &str, origin: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(json).map_err(|e| Error::ConfigFile {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        cfg.unet.validate()?;
        cfg.schedule.build()?;
        if let Some(r) = cfg.clip_sample_range {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::ConfigFile {
                    path: origin.to_string(),
                    reason: format!("clip_sample_range = {r} must be positive"),
                });
            }
        }
        cfg.validate_class_names().map_err(|e| Error::ConfigFile {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// The scheduler that `settings` describe for this model's schedule and prediction type
    /// (bad step counts or η are errors).
    pub fn scheduler(&self, settings: &SamplerSettings) -> Result<AnyScheduler> {
        settings.scheduler_clipped(
            &self.schedule.build()?,
            self.prediction_type,
            self.clip_range(),
        )
    }

    /// RePaint's scheduler for inpainting this model: `num_inference_steps` and `eta` as for
    /// DDIM, the jumps as diffusers' `RePaintScheduler`, clipping as the model's config says.
    /// The CLI, the HTTP API and the browser all inpaint through this.
    pub fn repaint_scheduler(
        &self,
        num_inference_steps: usize,
        eta: f64,
        jump_length: usize,
        jump_n_sample: usize,
    ) -> Result<AnyScheduler> {
        let clip = self.clip_range();
        let config = RePaintSchedulerConfig {
            num_inference_steps,
            jump_length,
            jump_n_sample,
            eta,
            clip_sample: clip.is_some(),
            clip_sample_range: clip.unwrap_or(1.0),
        };
        Ok(AnyScheduler::RePaint(
            config.init(&self.schedule.build()?, self.prediction_type)?,
        ))
    }

    /// The bound samplers clip x̂_0 to, `None` when they do not clip.
    pub fn clip_range(&self) -> Option<f64> {
        self.clip_sample
            .unwrap_or(true)
            .then(|| self.clip_sample_range.unwrap_or(1.0))
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config always serialises")
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// The config path that belongs to a weights path: `NAME.safetensors` → `NAME.json`.
pub fn config_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Serialises the model's weights to safetensors bytes (optionally as f16, half the size, for
/// the web), with a canonical header: the same weights give the same bytes. Reads every tensor
/// back synchronously, so call it on a native device.
pub fn weights_to_bytes(model: &UNet, half_precision: bool) -> Result<Vec<u8>> {
    let err = |e: burn::store::SafetensorsStoreError| Error::Weights {
        path: "<bytes>".into(),
        reason: e.to_string(),
    };
    let mut store = SafetensorsStore::from_bytes(None);
    if half_precision {
        store = store.with_to_adapter(FloatCastAdapter::to(DType::F16));
    }
    model.valid().save_into(&mut store).map_err(err)?;
    // Burn's metadata goes through a HashMap: sort the header so the same weights always give
    // the same bytes (and SHA-256).
    artifacts::canonical_safetensors(&store.get_bytes().map_err(err)?).map_err(|e| Error::Weights {
        path: "<bytes>".into(),
        reason: e.to_string(),
    })
}

/// Saves `NAME.safetensors` and `NAME.json` for `model` (atomically, each).
pub fn save_model(
    model: &UNet,
    config: &ModelConfig,
    weights_path: &Path,
    half_precision: bool,
) -> Result<()> {
    if &config.unet != model.config() {
        return Err(Error::Config(
            "the model config does not describe this model's U-Net".into(),
        ));
    }
    let bytes = weights_to_bytes(model, half_precision)?;
    write_atomic(weights_path, &bytes)?;
    write_atomic(&config_path(weights_path), config.to_json().as_bytes())?;
    Ok(())
}

/// Builds the model of `config` on `device` and loads `weights` (safetensors bytes, f32 or
/// f16) into it; `origin` names the weights in errors.
pub fn load_model_from_bytes(
    config: &ModelConfig,
    weights: Vec<u8>,
    origin: &str,
    device: &Device,
) -> Result<UNet> {
    let fail = |reason: String| Error::Weights {
        path: origin.to_string(),
        reason,
    };
    let mut model = config.unet.init(device)?;
    let mut store = SafetensorsStore::from_bytes(Some(weights))
        .allow_partial(true)
        .validate(false)
        .with_from_adapter(FloatCastAdapter::to(DType::F32));
    let result = model
        .load_from(&mut store)
        .map_err(|e| fail(first_line(&e.to_string())))?;
    check_apply(&result).map_err(fail)?;
    Ok(model)
}

/// Loads `NAME.safetensors` with its `NAME.json` config onto `device`.
pub fn load_model(weights_path: &Path, device: &Device) -> Result<(UNet, ModelConfig)> {
    let config = ModelConfig::load(&config_path(weights_path))?;
    let bytes = std::fs::read(weights_path).map_err(|source| Error::Io {
        path: weights_path.display().to_string(),
        source,
    })?;
    let model = load_model_from_bytes(&config, bytes, &weights_path.display().to_string(), device)?;
    Ok((model, config))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Turns a load report into one line that names the first offending tensor (`Ok` when every
/// tensor was applied and none is missing or unused).
pub fn check_apply(result: &ApplyResult) -> std::result::Result<(), String> {
    let more = |n: usize| {
        if n > 1 {
            format!(" (and {} more)", n - 1)
        } else {
            String::new()
        }
    };
    if let Some(e) = result.errors.first() {
        return Err(format!(
            "{}{}",
            first_line(&e.to_string()),
            more(result.errors.len())
        ));
    }
    if let Some((path, _)) = result.missing.first() {
        return Err(format!(
            "missing tensor `{path}`{} — were these weights saved for another config?",
            more(result.missing.len())
        ));
    }
    if let Some(path) = result.unused.first() {
        return Err(format!(
            "unexpected tensor `{path}`{} — were these weights saved for another config?",
            more(result.unused.len())
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::{NoiseRng, NormalTensor};

    fn tiny() -> ModelConfig {
        let unet = UNetConfig::new(1, 8, 32, vec![1, 2], vec![4])
            .with_num_res_blocks(1)
            .with_num_classes(Some(3));
        ModelConfig::new(unet)
    }

    fn output(model: &UNet, device: &Device) -> Vec<f32> {
        let x = NoiseRng::new(1).normal_tensor([2, 1, 8, 8], device);
        model
            .forward(x, &[5.0, 700.0], Some(&[0, 3]))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// A model whose every parameter, including the zero-initialised ones, is random.
    fn random_model(cfg: &ModelConfig, device: &Device) -> UNet {
        cfg.unet.init(device).unwrap().randomize(4, 0.1)
    }

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Same weights ⇒ same bytes: Burn builds the safetensors metadata in a `HashMap`, whose
    /// order changes from one map to the next, so repeated exports differed before the header
    /// was sorted. The pinned hashes (f32 and f16) catch any other change to the bytes we
    /// write; they depend only on the seeded portable RNG and the format.
    #[test]
    fn the_same_weights_always_give_the_same_bytes() {
        let device = Device::flex();
        let cfg = tiny();
        let model = random_model(&cfg, &device);
        let dir = std::env::temp_dir().join(format!("diffusion-bytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (half, pinned) in [
            (
                false,
                "338886b794a9359401c65912598ec9ed4967bab99ffb2b45e9fa63220ff82ba5",
            ),
            (
                true,
                "dabd499998db51dc5edcbe1c807b57641a095f4d2431b8606c0816d6d98b68d9",
            ),
        ] {
            let first = weights_to_bytes(&model, half).unwrap();
            for i in 0..8 {
                let path = dir.join(format!("w{i}.safetensors"));
                save_model(&model, &cfg, &path, half).unwrap();
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    first,
                    "export {i} (f16: {half})"
                );
                assert_eq!(
                    std::fs::read(config_path(&path)).unwrap(),
                    cfg.to_json().as_bytes()
                );
            }
            assert_eq!(sha256(&first), pinned, "f16: {half}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_gives_identical_outputs() {
        let device = Device::flex();
        let cfg = tiny();
        let model = random_model(&cfg, &device);
        let dir = std::env::temp_dir().join(format!("diffusion-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        save_model(&model, &cfg, &path, false).unwrap();
        let (loaded, loaded_cfg) = load_model(&path, &device).unwrap();
        assert_eq!(loaded_cfg, cfg);
        let (a, b) = (output(&model, &device), output(&loaded, &device));
        assert!(
            a.iter().any(|v| v.abs() > 1e-3),
            "the output is not trivially zero"
        );
        assert_eq!(a, b);
        // f16 weights load into the f32 model and give nearly the same output.
        let half = weights_to_bytes(&model, true).unwrap();
        let full = weights_to_bytes(&model, false).unwrap();
        assert!(half.len() < full.len() * 6 / 10);
        let h = load_model_from_bytes(&cfg, half, "half", &device).unwrap();
        let d = output(&h, &device)
            .iter()
            .zip(&a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(d < 0.05, "f16 round trip differs by {d}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn class_names_round_trip_and_must_match_the_classes() {
        let mut cfg = tiny();
        assert_eq!(cfg.class_name(2), "2");
        assert!(
            !cfg.to_json().contains("class_names"),
            "absent names are not written"
        );
        cfg.class_names = Some(vec!["cat".into(), "dog".into(), "bird".into()]);
        let back = ModelConfig::from_json(&cfg.to_json(), "c.json").unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.class_name(1), "dog");
        for (names, why) in [
            (vec!["cat", "dog"], "2 names for 3 classes"),
            (vec!["cat", "dog", " "], "class_names[2] is empty"),
            (vec!["cat", "dog", "cat"], "`cat` appears twice"),
        ] {
            cfg.class_names = Some(names.into_iter().map(String::from).collect());
            let e = ModelConfig::from_json(&cfg.to_json(), "c.json")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("c.json") && e.contains(why) && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn corrupt_or_mismatched_weights_are_clear_errors() {
        let device = Device::flex();
        let cfg = tiny();
        let bytes = weights_to_bytes(&random_model(&cfg, &device), false).unwrap();

        let truncated = bytes[..bytes.len() / 2].to_vec();
        let e = load_model_from_bytes(&cfg, truncated, "t.safetensors", &device).unwrap_err();
        assert!(e.to_string().starts_with("weights t.safetensors:"), "{e}");
        assert!(!e.to_string().contains('\n'));

        let garbage = b"not a safetensors file at all".to_vec();
        assert!(load_model_from_bytes(&cfg, garbage, "g", &device).is_err());

        // Weights of a wider model: shape mismatch, naming the tensor.
        let mut wide = cfg.clone();
        wide.unet.base_channels = 64;
        let e = load_model_from_bytes(&wide, bytes.clone(), "w", &device)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("conv_in.weight") || e.contains("time_embed_1"),
            "{e}"
        );
        assert!(e.to_lowercase().contains("shape"), "{e}");

        // Weights of a model with attention at one more resolution: missing tensors are named.
        let mut more_attention = cfg.clone();
        more_attention.unet.attention_resolutions = vec![4, 8];
        let e = load_model_from_bytes(&more_attention, bytes.clone(), "d", &device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing tensor `"), "{e}");

        // Weights with tensors the config does not have: extra tensors are named.
        let mut uncond = cfg.clone();
        uncond.unet.num_classes = None;
        let e = load_model_from_bytes(&uncond, bytes, "u", &device)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected tensor `class_embed.weight`"), "{e}");

        // Config JSON errors name the file and the problem.
        let e = ModelConfig::from_json("{\"unet\": 3}", "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config c.json:"), "{e}");
        let mut bad = cfg.to_json();
        bad = bad.replace("\"norm_groups\": 32", "\"norm_groups\": 5");
        let e = ModelConfig::from_json(&bad, "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_groups = 5"), "{e}");
    }
}
