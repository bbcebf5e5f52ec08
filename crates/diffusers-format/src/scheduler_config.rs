//! diffusers' scheduler config (`scheduler/scheduler_config.json`): the training noise
//! schedule, what the network predicts and the clipping of x̂_0, to and from our
//! [`ModelConfig`]'s schedule fields.
//!
//! A scheduler config mixes the model's training schedule (β, T, prediction type) with sampling
//! choices (timestep spacing, η, thresholding). The first are the model's and are carried over
//! exactly; the second are our samplers' settings (`trainer sample --sampler …`), so any that
//! differ from ours come back as notes, never silently.

use diffusion::{BetaSchedule, NoiseScheduleConfig, PredictionType};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::unet_config::{sorted, DIFFUSERS_VERSION};

/// What a scheduler config says about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerFacts {
    /// The training noise schedule.
    pub schedule: NoiseScheduleConfig,
    /// What the network predicts.
    pub prediction_type: PredictionType,
    /// Whether x̂_0 is clipped, and to what bound.
    pub clip_sample: bool,
    /// The clipping bound.
    pub clip_sample_range: f64,
    /// Settings that differ from our samplers' and are not carried over, one line each.
    pub notes: Vec<String>,
}

/// Reads a scheduler config (any diffusers scheduler class built on β: DDPM, DDIM,
/// DPM-Solver, …); `path` names the file in errors.
pub fn read(text: &str, path: &str) -> Result<SchedulerFacts> {
    let bad = |reason: String| Error::Config {
        path: path.into(),
        reason,
    };
    let unsupported = |field: &str, value: &Value, why: &str| Error::Unsupported {
        path: path.into(),
        field: field.into(),
        value: value.to_string(),
        why: why.into(),
    };
    let value: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(bad("not a JSON object".into()));
    };
    // Schedulers over a β schedule: the model's training schedule is in their config.
    const BETA_SCHEDULERS: &[&str] = &[
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverSDEScheduler",
        "PNDMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "LMSDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "RePaintScheduler",
        "DDPMParallelScheduler",
        "DDIMParallelScheduler",
        "LCMScheduler",
        "TCDScheduler",
    ];
    if let Some(class) = map.get("_class_name").and_then(Value::as_str) {
        if !BETA_SCHEDULERS.contains(&class) {
            return Err(unsupported(
                "_class_name",
                &Value::from(class),
                "a scheduler over a β schedule (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, …)",
            ));
        }
    }
    let get = |k: &str| map.get(k).filter(|v| !v.is_null());
    let number = |k: &str, default: f64| -> Result<f64> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("{k} = {v} is not a number"))),
        }
    };
    let flag = |k: &str, default: bool| -> Result<bool> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| bad(format!("{k} = {v} is not true/false"))),
        }
    };
    let text_of = |k: &str, default: &str| -> Result<String> {
        match get(k) {
            None => Ok(default.to_string()),
            Some(v) => v
                .as_str()
                .map(String::from)
                .ok_or_else(|| bad(format!("{k} = {v} is not a string"))),
        }
    };
    let t = number("num_train_timesteps", 1000.0)?;
    if !(t >= 1.0 && t.fract() == 0.0) {
        return Err(bad(format!(
            "num_train_timesteps = {t} is not a positive integer"
        )));
    }
    if let Some(v) = get("trained_betas") {
        return Err(unsupported(
            "trained_betas",
            v,
            "a named beta_schedule (linear, scaled_linear, squaredcos_cap_v2, sigmoid)",
        ));
    }
    let (beta_start, beta_end) = (number("beta_start", 0.0001)?, number("beta_end", 0.02)?);
    let beta_schedule = match text_of("beta_schedule", "linear")?.as_str() {
        "linear" => BetaSchedule::Linear {
            beta_start,
            beta_end,
        },
        "scaled_linear" => BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        },
        "squaredcos_cap_v2" => BetaSchedule::cosine(),
        "sigmoid" => BetaSchedule::Sigmoid {
            beta_start,
            beta_end,
        },
        other => {
            return Err(unsupported(
                "beta_schedule",
                &Value::from(other),
                "linear, scaled_linear, squaredcos_cap_v2 or sigmoid",
            ))
        }
    };
    let mut schedule = NoiseScheduleConfig::new(beta_schedule, t as usize);
    schedule.rescale_zero_terminal_snr = flag("rescale_betas_zero_snr", false)?;
    schedule.build().map_err(|e| bad(e.to_string()))?;
    let prediction_type = match text_of("prediction_type", "epsilon")?.as_str() {
        "epsilon" => PredictionType::Epsilon,
        "v_prediction" => PredictionType::VPrediction,
        other => {
            return Err(unsupported(
                "prediction_type",
                &Value::from(other),
                "epsilon or v_prediction",
            ))
        }
    };
    let clip_sample = flag("clip_sample", true)?;
    let clip_sample_range = number("clip_sample_range", 1.0)?;
    if !(clip_sample_range > 0.0 && clip_sample_range.is_finite()) {
        return Err(bad(format!(
            "clip_sample_range = {clip_sample_range} must be positive"
        )));
    }
    let mut notes = Vec::new();
    let mut note = |k: &str, ours: &str| {
        if let Some(v) = get(k) {
            let shown = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            if shown != ours {
                notes.push(format!(
                    "scheduler {k} = {shown} is a sampling setting; our samplers use {ours}"
                ));
            }
        }
    };
    note("variance_type", "fixed_small");
    note("thresholding", "false");
    note("timestep_spacing", "leading");
    note("steps_offset", "0");
    note("set_alpha_to_one", "true");
    Ok(SchedulerFacts {
        schedule,
        prediction_type,
        clip_sample,
        clip_sample_range,
        notes,
    })
}

/// A `DDPMScheduler` config for our schedule (what `DDPMPipeline` loads).
pub fn write(
    schedule: &NoiseScheduleConfig,
    prediction_type: PredictionType,
    clip_range: Option<f64>,
) -> std::result::Result<String, String> {
    let mut m = Map::new();
    let mut set = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    set("_class_name", "DDPMScheduler".into());
    set("_diffusers_version", DIFFUSERS_VERSION.into());
    set("num_train_timesteps", schedule.num_train_timesteps.into());
    let (name, start, end) = match schedule.beta_schedule {
        BetaSchedule::Linear {
            beta_start,
            beta_end,
        } => ("linear", beta_start, beta_end),
        BetaSchedule::ScaledLinear {
            beta_start,
            beta_end,
        } => ("scaled_linear", beta_start, beta_end),
        BetaSchedule::Sigmoid {
            beta_start,
            beta_end,
        } => ("sigmoid", beta_start, beta_end),
        c @ BetaSchedule::Cosine { .. } if c == BetaSchedule::cosine() => {
            ("squaredcos_cap_v2", 0.0001, 0.02)
        }
        BetaSchedule::Cosine { s, max_beta } => {
            return Err(format!(
                "a cosine schedule with s = {s}, max_beta = {max_beta} has no diffusers name \
                 (squaredcos_cap_v2 is s = 0.008, max_beta = 0.999)"
            ))
        }
    };
    set("beta_schedule", name.into());
    set("beta_start", start.into());
    set("beta_end", end.into());
    set("trained_betas", Value::Null);
    set("variance_type", "fixed_small".into());
    set("clip_sample", clip_range.is_some().into());
    set("clip_sample_range", clip_range.unwrap_or(1.0).into());
    set(
        "prediction_type",
        match prediction_type {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
        }
        .into(),
    );
    set("thresholding", false.into());
    set("dynamic_thresholding_ratio", 0.995.into());
    set("sample_max_value", 1.0.into());
    set("timestep_spacing", "leading".into());
    set("steps_offset", 0.into());
    set(
        "rescale_betas_zero_snr",
        schedule.rescale_zero_terminal_snr.into(),
    );
    let mut text = serde_json::to_string_pretty(&sorted(Value::Object(m))).expect("JSON");
    text.push('\n');
    Ok(text)
}
