//! The HTTP API's request and response types (the OpenAPI document is generated from them)
//! and their validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use diffusion::sampler::{
    plan_edit, AnyScheduler, Edit, EditFields, EditOptions, SamplerKind, SamplerSettings,
};
use diffusion::{ModelConfig, SampleRequest};

/// Largest guidance scale accepted.
pub const MAX_GUIDANCE: f64 = 30.0;
/// Largest number of images per request (the service steps a many-image request in parts
/// beside others, so it does not hold the batch).
pub const MAX_IMAGES: u32 = 64;
/// Largest request body, bytes.
pub const MAX_BODY: usize = 1 << 20;

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
    /// Edit this image instead of sampling from noise (base64 PNG at the model's size, grey or
    /// RGB): SDEdit at `strength` (variations, sketch to image), or with `mask` inpainting.
    #[serde(default)]
    pub init_image: Option<String>,
    /// Inpainting (RePaint) of `init_image`: base64 PNG at the model's size, white where the
    /// image is regenerated, black where it is kept (diffusers' convention).
    #[serde(default)]
    pub mask: Option<String>,
    /// SDEdit with `init_image`: how much of the schedule to run, in (0, 1] (default 0.8).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub strength: Option<f64>,
    /// Inpainting: steps jumped back up at each jump point (RePaint's j; default 10).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub jump_length: Option<u32>,
    /// Inpainting: resamplings per jump point (RePaint's r; default 10, 1 = no jumps).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub jump_n_sample: Option<u32>,
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
            init_image: None,
            mask: None,
            strength: None,
            jump_length: None,
            jump_n_sample: None,
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
            ..d
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
    /// An image to edit, if any.
    pub edit: Option<Edit>,
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
    let (edit, scheduler) = edit(req, config, &settings)?;
    Ok(Job {
        class_label: req.class_label.map(|k| k as usize),
        guidance_scale: w,
        scheduler,
        seed,
        num_images: req.num_images as usize,
        edit,
    })
}

/// The request's names for the edit options, in its error messages.
const EDIT_FIELDS: EditFields = EditFields {
    init_image: "init_image",
    mask: "mask",
    strength: "strength",
    jump_length: "jump_length",
    jump_n_sample: "jump_n_sample",
    sampler: "sampler",
    steps: "num_inference_steps",
};

/// The image edit a request asks for (`init_image`, `mask`, `strength`, `jump_*`), checked
/// field by field ([`plan_edit`]), and the sampler that runs it.
fn edit(
    req: &GenerateRequest,
    config: &ModelConfig,
    settings: &SamplerSettings,
) -> Result<(Option<Edit>, AnyScheduler), String> {
    let [c, h, _] = config.unet.image_shape();
    let decode = |field: &str, b64: &Option<String>, channels: usize| {
        b64.as_ref()
            .map(|b64| {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("{field}: not base64 ({e})"))?;
                artifacts::image_values(&bytes, channels, h, false)
                    .map_err(|e| format!("{field}: {e}"))
            })
            .transpose()
    };
    let options = EditOptions {
        init_image: decode("init_image", &req.init_image, c)?,
        mask: decode("mask", &req.mask, 1)?,
        strength: req.strength,
        jump_length: req.jump_length.map(|j| j as usize),
        jump_n_sample: req.jump_n_sample.map(|j| j as usize),
        sampler_given: req.sampler != SamplerKind::default() || req.use_karras_sigmas,
    };
    plan_edit(config, settings, options, &EDIT_FIELDS)
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

    /// Hostile values of the image-editing fields, combined at random (a seeded generator):
    /// parsing and validation answer every body, one-line errors, no panic.
    #[test]
    fn random_edit_requests_never_panic() {
        use base64::Engine;
        let config = ModelConfig::new(diffusion::UNetConfig::new(1, 8, 32, vec![1, 2], vec![]));
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let png = |side: usize| {
            let values = vec![0.5f32; side * side];
            artifacts::png_bytes(&artifacts::grid(&values, [1, 1, side, side], 1, 0, 1))
        };
        let good = png(8);
        let images = [
            format!("\"{}\"", b64(&good)),
            format!("\"{}\"", b64(&good[..good.len() / 2])),
            format!("\"{}\"", b64(&png(9))),
            format!("\"{}\"", b64(&png(1))),
            "\"\"".into(),
            "\"%%%\"".into(),
            "null".into(),
            "17".into(),
            "[1, 2]".into(),
        ];
        let numbers = [
            "0", "1", "-1", "0.5", "1e308", "-0.0", "3", "null", "\"x\"", "1000000",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..2000 {
            let mut fields = vec![format!(
                "\"num_inference_steps\": {}",
                ["1", "5", "10"][next(3)]
            )];
            for key in ["init_image", "mask"] {
                if next(3) > 0 {
                    fields.push(format!("\"{key}\": {}", images[next(images.len())]));
                }
            }
            for key in ["strength", "jump_length", "jump_n_sample", "eta"] {
                if next(2) > 0 {
                    fields.push(format!("\"{key}\": {}", numbers[next(numbers.len())]));
                }
            }
            if next(4) == 0 {
                fields.push("\"sampler\": \"ddim\"".into());
            }
            let body = format!("{{{}}}", fields.join(", "));
            let Ok(req) = serde_json::from_str::<GenerateRequest>(&body) else {
                continue;
            };
            if let Err(e) = validate(&req, &config, 1) {
                assert!(!e.contains('\n') && !e.is_empty(), "{body}: {e}");
            }
        }
    }
}
