//! The HTTP API's request and response types (the OpenAPI document is generated from them)
//! and their validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use diffusion::sampler::{AnyScheduler, SamplerKind, SamplerSettings};
use diffusion::{ModelConfig, SampleRequest};

/// Largest guidance scale accepted.
pub const MAX_GUIDANCE: f64 = 30.0;
/// Largest number of images per request (the service steps a many-image request in parts
/// beside others, so it does not hold the batch).
pub const MAX_IMAGES: u32 = 64;
/// Largest request body, bytes.
pub const MAX_BODY: usize = 16 * 1024;

fn default_guidance() -> f64 {
    3.0
}
fn default_steps() -> u32 {
    50
}
fn default_num_images() -> u32 {
    1
}

/// The sampler names, for the OpenAPI document (requests deserialize straight into
/// [`SamplerKind`], whose names these are; a test checks the two lists agree).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum SamplerName {
    /// DDIM (deterministic at η = 0).
    #[schema(rename = "ddim")]
    Ddim,
    /// DDPM ancestral sampling.
    #[schema(rename = "ddpm")]
    Ddpm,
    /// DPM-Solver++ (2M): about DDIM-50 quality in 15 steps.
    #[schema(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
    /// SDE-DPM-Solver++ (2M), stochastic.
    #[schema(rename = "sde-dpmsolver++")]
    SdeDpmSolverPlusPlus,
}

/// A sampling request. Every field may be omitted (defaults shown); unknown fields are an
/// error.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Class to sample (0-based); `null` samples unconditionally.
    #[serde(default)]
    pub class_label: Option<u32>,
    /// Classifier-free guidance scale w in [0, 30]: ε = ε_u + w (ε_c − ε_u), so 1 is plain
    /// conditional sampling and 0 unconditional.
    #[serde(default = "default_guidance")]
    #[schema(default = 3.0, minimum = 0.0, maximum = 30.0)]
    pub guidance_scale: f64,
    /// `ddim`, `ddpm`, `dpmsolver++` or `sde-dpmsolver++`.
    #[serde(default)]
    #[schema(value_type = SamplerName, default = "ddpm")]
    pub sampler: SamplerKind,
    /// Denoising steps, 1..=T.
    #[serde(default = "default_steps")]
    #[schema(default = 50, minimum = 1)]
    pub num_inference_steps: u32,
    /// DDIM's η in [0, 1] (0 = deterministic).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub eta: f64,
    /// DPM-Solver++ only: Karras noise levels ("DPM++ 2M Karras").
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Noise seed; `null` picks one at random (it is returned, so the result can be repeated).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Images to return, 1..=64 (all from one noise stream of `seed`).
    #[serde(default = "default_num_images")]
    #[schema(default = 1, minimum = 1, maximum = 64)]
    pub num_images: u32,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            class_label: None,
            guidance_scale: default_guidance(),
            sampler: SamplerKind::default(),
            num_inference_steps: default_steps(),
            eta: 0.0,
            use_karras_sigmas: false,
            seed: None,
            num_images: default_num_images(),
        }
    }
}

/// The query of `GET /v1/generate.png` (one image).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateQuery {
    /// Class to sample; omit for unconditional.
    pub class_label: Option<u32>,
    /// Guidance scale (default 3).
    pub guidance_scale: Option<f64>,
    /// `ddpm` (default), `ddim`, `dpmsolver++` or `sde-dpmsolver++`.
    #[schema(value_type = Option<SamplerName>)]
    pub sampler: Option<SamplerKind>,
    /// Denoising steps (default 50).
    pub num_inference_steps: Option<u32>,
    /// DDIM η (default 0).
    pub eta: Option<f64>,
    /// DPM-Solver++ with Karras noise levels (default false).
    pub use_karras_sigmas: Option<bool>,
    /// Noise seed (default 0, so the URL names one image).
    pub seed: Option<u64>,
}

impl From<GenerateQuery> for GenerateRequest {
    fn from(q: GenerateQuery) -> Self {
        let d = GenerateRequest::default();
        Self {
            class_label: q.class_label,
            guidance_scale: q.guidance_scale.unwrap_or(d.guidance_scale),
            sampler: q.sampler.unwrap_or(d.sampler),
            num_inference_steps: q.num_inference_steps.unwrap_or(d.num_inference_steps),
            eta: q.eta.unwrap_or(d.eta),
            use_karras_sigmas: q.use_karras_sigmas.unwrap_or(d.use_karras_sigmas),
            seed: Some(q.seed.unwrap_or(0)),
            num_images: 1,
        }
    }
}

/// A sampling result.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct GenerateResponse {
    /// The images, each a base64-encoded PNG.
    pub images: Vec<String>,
    /// The seed used.
    pub seed: u64,
    /// The class sampled (`null` = unconditional).
    pub class_label: Option<u32>,
    /// The guidance scale used.
    pub guidance_scale: f64,
    /// The sampler used.
    #[schema(value_type = SamplerName)]
    pub sampler: SamplerKind,
    /// Denoising steps.
    pub num_inference_steps: u32,
    /// DDIM η.
    pub eta: f64,
    /// Whether DPM-Solver++ used Karras noise levels.
    pub use_karras_sigmas: bool,
    /// Sampling time, milliseconds (queueing excluded).
    pub elapsed_ms: f64,
}

/// The model the service samples (`GET /v1/model`): what a browser needs to run the same model
/// itself, and a content hash to key its cache by.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ModelInfo {
    /// The model's config (`NAME.json`: U-Net, schedule, prediction type).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Image shape `[channels, height, width]`.
    pub image_shape: [usize; 3],
    /// Number of classes (`null` for an unconditional model).
    pub num_classes: Option<usize>,
    /// Where the weights are served (`/weights/NAME.safetensors`).
    pub weights_url: String,
    /// Where the config is served (`/weights/NAME.json`).
    pub config_url: String,
    /// SHA-256 of the weights file, then the config file, as lowercase hex: changes whenever
    /// either does.
    pub sha256: String,
    /// Size of the weights file, bytes.
    pub weights_bytes: u64,
}

/// An error: the message names the offending field or problem.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// A validated request, ready for a worker.
#[derive(Debug, Clone)]
pub struct Job {
    /// Class or unconditional.
    pub class_label: Option<usize>,
    /// Guidance scale.
    pub guidance_scale: f64,
    /// The sampler, built (and so checked) once, when the request is validated.
    pub scheduler: AnyScheduler,
    /// Seed.
    pub seed: u64,
    /// Images.
    pub num_images: usize,
}

impl Job {
    /// What it samples, for a model of images of `image_shape`.
    pub fn request(&self, image_shape: [usize; 3]) -> SampleRequest {
        SampleRequest {
            image_shape,
            class_labels: vec![self.class_label; self.num_images],
            guidance_scale: self.guidance_scale,
            seed: self.seed,
        }
    }
}

/// Checks ranges against the model (classes, T, the sampler's own rules) and builds the
/// sampler; the message names the field.
pub fn validate(req: &GenerateRequest, config: &ModelConfig, seed: u64) -> Result<Job, String> {
    let num_classes = config.unet.num_classes;
    let num_train_timesteps = config.schedule.num_train_timesteps;
    if let Some(k) = req.class_label {
        match num_classes {
            None => {
                return Err(format!(
                    "class_label: {k} given, but the model is unconditional (use null)"
                ))
            }
            Some(n) if k as usize >= n => {
                return Err(format!("class_label: {k} is out of range 0..={}", n - 1))
            }
            _ => {}
        }
    }
    let w = req.guidance_scale;
    if !(w.is_finite() && (0.0..=MAX_GUIDANCE).contains(&w)) {
        return Err(format!(
            "guidance_scale: {w} must be a finite number in [0, {MAX_GUIDANCE}]"
        ));
    }
    let s = req.num_inference_steps as usize;
    if !(1..=num_train_timesteps).contains(&s) {
        return Err(format!(
            "num_inference_steps: {s} must lie in 1..={num_train_timesteps}"
        ));
    }
    if !(req.eta.is_finite() && (0.0..=1.0).contains(&req.eta)) {
        return Err(format!("eta: {} must lie in [0, 1]", req.eta));
    }
    if !(1..=MAX_IMAGES).contains(&req.num_images) {
        return Err(format!(
            "num_images: {} must lie in 1..={MAX_IMAGES}",
            req.num_images
        ));
    }
    let settings = SamplerSettings {
        sampler: req.sampler,
        num_inference_steps: s,
        eta: req.eta,
        use_karras_sigmas: req.use_karras_sigmas,
    };
    // The sampler's own rules (e.g. DPM-Solver++'s spacings cannot repeat a timestep).
    let scheduler = config
        .scheduler(&settings)
        .map_err(|e| format!("sampler: {e}"))?;
    Ok(Job {
        class_label: req.class_label.map(|k| k as usize),
        guidance_scale: w,
        scheduler,
        seed,
        num_images: req.num_images as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        // The MNIST preset: 10 classes, T = 1000.
        let config = ModelConfig::new(diffusion::UNetConfig::mnist());
        let ok = GenerateRequest {
            class_label: Some(3),
            ..Default::default()
        };
        assert!(validate(&ok, &config, 1).is_ok());
        let cases = [
            (
                GenerateRequest {
                    class_label: Some(10),
                    ..ok.clone()
                },
                "class_label",
            ),
            (
                GenerateRequest {
                    guidance_scale: 31.0,
                    ..ok.clone()
                },
                "guidance_scale",
            ),
            (
                GenerateRequest {
                    guidance_scale: -1.0,
                    ..ok.clone()
                },
                "guidance_scale",
            ),
            (
                GenerateRequest {
                    num_inference_steps: 0,
                    ..ok.clone()
                },
                "num_inference_steps",
            ),
            (
                GenerateRequest {
                    num_inference_steps: 1001,
                    ..ok.clone()
                },
                "num_inference_steps",
            ),
            (
                GenerateRequest {
                    eta: 1.5,
                    ..ok.clone()
                },
                "eta",
            ),
            (
                GenerateRequest {
                    num_images: 65,
                    ..ok.clone()
                },
                "num_images",
            ),
            (
                GenerateRequest {
                    num_images: 0,
                    ..ok.clone()
                },
                "num_images",
            ),
        ];
        for (req, field) in cases {
            let e = validate(&req, &config, 1).unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }
}
