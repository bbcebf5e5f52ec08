//! An image edit a request asks for — SDEdit from an image, or RePaint inpainting of it — checked
//! the same way wherever the request comes from (the HTTP API's JSON, the browser's options),
//! each message naming the caller's own field, and the scheduler that runs it.

use super::{sdedit_start_index, AnyScheduler, SamplerSettings, Scheduler};
use crate::weights::ModelConfig;

/// Where a run starts instead of the seed's noise alone. Images are `[channels, height, width]`
/// values in [-1, 1], the same for every image of the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// SDEdit from `image` at `strength` ([`sdedit_start_index`]).
    Vary {
        /// The image.
        image: Vec<f32>,
        /// How much of the schedule to run, in (0, 1].
        strength: f64,
    },
    /// RePaint: `image` kept where `keep` is 1, regenerated where it is 0.
    Inpaint {
        /// The image.
        image: Vec<f32>,
        /// 1 where the image is kept ([`super::keep_from_mask`]).
        keep: Vec<f32>,
    },
}

/// What the caller calls each option, for its error messages (`init_image` in JSON,
/// `initImage` in JavaScript, …).
#[derive(Debug, Clone, Copy)]
pub struct EditFields {
    /// The image to start from.
    pub init_image: &'static str,
    /// The inpainting mask.
    pub mask: &'static str,
    /// SDEdit's strength.
    pub strength: &'static str,
    /// RePaint's jump length.
    pub jump_length: &'static str,
    /// RePaint's resamplings per jump point.
    pub jump_n_sample: &'static str,
    /// The sampler settings that inpainting does not take.
    pub sampler: &'static str,
    /// The step count.
    pub steps: &'static str,
}

/// An edit's options as given (images already read as model values: the init image with the
/// model's channels, the mask with one).
#[derive(Debug, Clone, Default)]
pub struct EditOptions {
    /// The image to start from.
    pub init_image: Option<Vec<f32>>,
    /// The mask, white (> 0) = regenerate.
    pub mask: Option<Vec<f32>>,
    /// SDEdit's strength (default 0.8, diffusers' img2img default).
    pub strength: Option<f64>,
    /// RePaint's jump length (default 10, as diffusers').
    pub jump_length: Option<usize>,
    /// RePaint's resamplings per jump point (default 10, as diffusers'; at most 100).
    pub jump_n_sample: Option<usize>,
    /// Whether a sampler or noise-level choice was given (inpainting takes RePaint's steps).
    pub sampler_given: bool,
}

/// The most resamplings per jump point a request may ask for (each multiplies the work).
pub const MAX_JUMP_N_SAMPLE: usize = 100;

/// The edit `o` asks for (none without an init image) and the scheduler that runs it: the
/// settings' sampler, or for inpainting RePaint with the settings' steps and η. An option that
/// does not apply is an error, not ignored; every message starts with the field it is about.
pub fn plan_edit(
    config: &ModelConfig,
    settings: &SamplerSettings,
    o: EditOptions,
    f: &EditFields,
) -> Result<(Option<Edit>, AnyScheduler), String> {
    let sampler = || {
        config
            .scheduler(settings)
            .map_err(|e| format!("{}: {e}", f.sampler))
    };
    let not_without = |given: &[(&str, bool)], what: &str| -> Result<(), String> {
        match given.iter().find(|(_, g)| *g) {
            Some((field, _)) => Err(format!("{field}: applies to {what}, and none was given")),
            None => Ok(()),
        }
    };
    let inpainting = [
        (f.jump_length, o.jump_length.is_some()),
        (f.jump_n_sample, o.jump_n_sample.is_some()),
    ];
    let Some(image) = o.init_image else {
        let mut given = vec![
            (f.mask, o.mask.is_some()),
            (f.strength, o.strength.is_some()),
        ];
        given.extend(inpainting);
        not_without(&given, &format!("an {}", f.init_image))?;
        return Ok((None, sampler()?));
    };
    let c = config.unet.image_shape()[0];
    let Some(mask) = o.mask else {
        not_without(&inpainting, &format!("inpainting (a {})", f.mask))?;
        let strength = o.strength.unwrap_or(0.8);
        let scheduler = sampler()?;
        sdedit_start_index(scheduler.timesteps().len(), strength)
            .map_err(|e| format!("{}: {e}", f.strength))?;
        return Ok((Some(Edit::Vary { image, strength }), scheduler));
    };
    if o.strength.is_some() {
        return Err(format!(
            "{}: applies to SDEdit (an {} without a {})",
            f.strength, f.init_image, f.mask
        ));
    }
    if o.sampler_given {
        return Err(format!(
            "{}: inpainting (a {}) takes RePaint's steps; leave the sampler settings out ({} and \
             eta apply)",
            f.sampler, f.mask, f.steps
        ));
    }
    let (jump_length, jump_n_sample) = (o.jump_length.unwrap_or(10), o.jump_n_sample.unwrap_or(10));
    if !(1..=MAX_JUMP_N_SAMPLE).contains(&jump_n_sample) {
        return Err(format!(
            "{}: {jump_n_sample} must lie in 1..={MAX_JUMP_N_SAMPLE}",
            f.jump_n_sample
        ));
    }
    let steps = settings.num_inference_steps;
    if jump_length == 0 || jump_length > steps {
        return Err(format!(
            "{}: {jump_length} must lie in 1..={steps} ({})",
            f.jump_length, f.steps
        ));
    }
    let repaint = config
        .repaint_scheduler(steps, settings.eta, jump_length, jump_n_sample)
        .map_err(|e| format!("{}: {e}", f.mask))?;
    let keep = super::keep_from_mask(&mask, c);
    Ok((Some(Edit::Inpaint { image, keep }), repaint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;

    const JS: EditFields = EditFields {
        init_image: "initImage",
        mask: "mask",
        strength: "strength",
        jump_length: "jumpLength",
        jump_n_sample: "jumpNSample",
        sampler: "sampler",
        steps: "steps",
    };

    #[test]
    fn options_that_do_not_apply_are_errors_in_the_callers_names() {
        let config = ModelConfig::new(UNetConfig::mnist());
        let settings = SamplerSettings {
            num_inference_steps: 20,
            ..SamplerSettings::default()
        };
        let image = Some(vec![0.0; 784]);
        let err = |o: EditOptions| plan_edit(&config, &settings, o, &JS).err().unwrap();
        let e = err(EditOptions {
            jump_length: Some(3),
            ..Default::default()
        });
        assert_eq!(e, "jumpLength: applies to an initImage, and none was given");
        let e = err(EditOptions {
            init_image: image.clone(),
            jump_n_sample: Some(3),
            ..Default::default()
        });
        assert!(e.starts_with("jumpNSample: applies to inpainting"), "{e}");
        let e = err(EditOptions {
            init_image: image.clone(),
            mask: image.clone(),
            sampler_given: true,
            ..Default::default()
        });
        assert!(
            e.starts_with("sampler: inpainting") && e.contains("steps"),
            "{e}"
        );
        let e = err(EditOptions {
            init_image: image.clone(),
            mask: image.clone(),
            jump_length: Some(21),
            ..Default::default()
        });
        assert_eq!(e, "jumpLength: 21 must lie in 1..=20 (steps)");
        assert!(err(EditOptions {
            init_image: image.clone(),
            strength: Some(1.5),
            ..Default::default()
        })
        .starts_with("strength: "));
        // The plans: none, SDEdit at the default strength, RePaint keeping the black pixels.
        let plan = |o| plan_edit(&config, &settings, o, &JS).unwrap().0;
        assert_eq!(plan(EditOptions::default()), None);
        let vary = plan(EditOptions {
            init_image: image.clone(),
            ..Default::default()
        });
        assert!(matches!(vary, Some(Edit::Vary { strength, .. }) if strength == 0.8));
        let mut mask = vec![-1.0; 784];
        mask[0] = 1.0;
        let Some(Edit::Inpaint { keep, .. }) = plan(EditOptions {
            init_image: image,
            mask: Some(mask),
            ..Default::default()
        }) else {
            panic!("not inpainting")
        };
        assert_eq!((keep[0], keep[1]), (0.0, 1.0));
    }
}
