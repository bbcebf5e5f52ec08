//! The one sampling loop: any [`Denoiser`], any [`Scheduler`], class labels or none,
//! classifier-free guidance, a seed, and per-step progress with x̂_0.
//!
//! [`Sampling`] is a step-by-step state machine so that callers that must `await` between steps
//! (the browser reads previews back asynchronously) drive it themselves; [`Sampling::run`] is
//! the plain loop with a progress callback. Nothing is read back from the device unless the
//! caller does so.

use burn::tensor::{Device, Tensor, TensorData};

use super::{Edit, Scheduler, SchedulerState};
use crate::error::{Error, Result};
use crate::guidance::classifier_free_guidance;
use crate::noise::{NoiseRng, NormalTensor};

/// A network that predicts the model output (ε or v) for a batch at given timesteps.
pub trait Denoiser {
    /// Number of classes of a class-conditional model (the null class is this index), or
    /// `None` for an unconditional model.
    fn num_classes(&self) -> Option<usize>;

    /// Predicts the model output.
    ///
    /// # Shapes
    /// - `x`: `[batch, channels, height, width]`; `timesteps`: `batch` values;
    ///   `class_labels`: `batch` values in `0..=num_classes` (`num_classes` = null class), or
    ///   `None` for an unconditional model.
    /// - output: like `x`.
    fn predict(&self, x: Tensor<4>, timesteps: &[f64], class_labels: Option<&[usize]>)
        -> Tensor<4>;
}

/// What to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// Image shape `[channels, height, width]`.
    pub image_shape: [usize; 3],
    /// One entry per image: `Some(k)` samples class k, `None` samples unconditionally.
    pub class_labels: Vec<Option<usize>>,
    /// Classifier-free guidance scale w (see [`crate::guidance`]); ignored when no image is
    /// conditional.
    pub guidance_scale: f64,
    /// Seed of the host noise generator (initial x_T and every step's noise).
    pub seed: u64,
}

impl SampleRequest {
    /// Rows of each model call of the run it starts on a model with `num_classes` classes
    /// (`None`: unconditional): its images, twice when guided — [`SamplingState::rows`],
    /// known before the run is made (a server weighs requests by it).
    pub fn rows(&self, num_classes: Option<usize>) -> usize {
        let w = self.guidance_scale;
        let guided = num_classes.is_some()
            && self.class_labels.iter().any(Option::is_some)
            && w != 1.0
            && w != 0.0;
        self.class_labels.len() * if guided { 2 } else { 1 }
    }

    /// `num_images` images, all of class `class_label` (or unconditional).
    pub fn new(image_shape: [usize; 3], class_label: Option<usize>, num_images: usize) -> Self {
        Self {
            image_shape,
            class_labels: vec![class_label; num_images],
            guidance_scale: 1.0,
            seed: 0,
        }
    }

    /// Sets the guidance scale.
    pub fn with_guidance_scale(mut self, guidance_scale: f64) -> Self {
        self.guidance_scale = guidance_scale;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// What each step reports.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// Zero-based step index.
    pub step_index: usize,
    /// Number of steps in total.
    pub num_steps: usize,
    /// The timestep t that was just denoised.
    pub timestep: usize,
    /// x̂_0 predicted at this step (on the device; read it back only for previews).
    pub pred_original_sample: Tensor<4>,
}

/// How the model is queried at each step.
#[derive(Debug, Clone)]
enum Pass {
    /// Unconditional model: no labels.
    Unconditional,
    /// One pass with these labels (w = 1, w = 0, or no image conditional).
    Single(Vec<usize>),
    /// Conditional labels then null labels, as one batch of 2B.
    Guided(Vec<usize>),
}

/// One step's model call: the batch to predict (both guidance passes included) and what to
/// predict it at. [`SamplingState::advance`] takes the prediction.
#[derive(Debug, Clone)]
pub struct ModelQuery {
    /// The model input, `[rows, channels, height, width]`: x_t, twice when guided.
    pub x: Tensor<4>,
    /// One timestep per row.
    pub timesteps: Vec<f64>,
    /// One label per row (the null class for the unconditional pass), or `None` for an
    /// unconditional model.
    pub class_labels: Option<Vec<usize>>,
}

/// The state of a sampling run without the model and scheduler it runs with: x_t, the
/// scheduler's memory, the noise generator and the step index. Steps are split in two so that
/// several runs can share one model call ([`super::step_together`]): [`Self::query`] says what
/// to predict, [`Self::advance`] takes the prediction and does guidance and the scheduler step.
/// [`Sampling`] is the same with the model and scheduler attached. A clone is cheap (the
/// tensor is shared) and continues exactly as the original would: a snapshot to retry a step.
#[derive(Clone)]
pub struct SamplingState {
    sample: Tensor<4>,
    state: SchedulerState,
    rng: NoiseRng,
    pass: Pass,
    guidance_scale: f64,
    step_index: usize,
}

impl SamplingState {
    /// Validates the request against a model with `num_classes` classes (`None`:
    /// unconditional) and draws x_T ~ N(0, I) from the seeded host generator.
    pub fn new(
        num_classes: Option<usize>,
        request: &SampleRequest,
        device: &Device,
    ) -> Result<Self> {
        let b = request.class_labels.len();
        if b == 0 {
            return Err(Error::Sampler(
                "at least one image must be requested".into(),
            ));
        }
        if request.image_shape.contains(&0) {
            return Err(Error::Sampler(format!(
                "image_shape {:?} has a zero dimension",
                request.image_shape
            )));
        }
        let w = request.guidance_scale;
        if !w.is_finite() {
            return Err(Error::Sampler(format!(
                "guidance_scale = {w} must be finite"
            )));
        }
        let pass = match num_classes {
            None => {
                if let Some(k) = request.class_labels.iter().flatten().next() {
                    return Err(Error::Sampler(format!(
                        "class label {k} given, but the model is unconditional"
                    )));
                }
                Pass::Unconditional
            }
            Some(n) => {
                if let Some(k) = request.class_labels.iter().flatten().find(|&&k| k >= n) {
                    return Err(Error::Sampler(format!(
                        "class label {k} out of range: the model has classes 0..={}",
                        n - 1
                    )));
                }
                let cond: Vec<usize> = request
                    .class_labels
                    .iter()
                    .map(|k| k.unwrap_or(n))
                    .collect();
                let any_cond = request.class_labels.iter().any(Option::is_some);
                if !any_cond || w == 1.0 {
                    Pass::Single(cond)
                } else if w == 0.0 {
                    Pass::Single(vec![n; b])
                } else {
                    Pass::Guided(cond.into_iter().chain(std::iter::repeat_n(n, b)).collect())
                }
            }
        };
        let mut rng = NoiseRng::new(request.seed);
        let [c, h, wd] = request.image_shape;
        let sample = rng.normal_tensor([b, c, h, wd], device);
        Ok(Self {
            sample,
            state: SchedulerState::default(),
            rng,
            pass,
            guidance_scale: w,
            step_index: 0,
        })
    }

    /// Makes this an inpainting run for [`super::RePaintScheduler`]: `image` (values in [-1,
    /// 1]) is kept where `keep` is 1 and regenerated where it is 0.
    ///
    /// # Shapes
    /// - `image`, `keep`: like the sample, `[images, channels, height, width]`.
    pub fn with_inpainting(mut self, image: Tensor<4>, keep: Tensor<4>) -> Result<Self> {
        for (what, t) in [("image", &image), ("mask", &keep)] {
            if t.dims() != self.sample.dims() {
                return Err(Error::Sampler(format!(
                    "the {what} to inpaint has shape {:?}; this request needs {:?}",
                    t.dims(),
                    self.sample.dims()
                )));
            }
        }
        let dtype = self.sample.dtype();
        self.state =
            std::mem::take(&mut self.state).with_inpainting(image.cast(dtype), keep.cast(dtype));
        Ok(self)
    }

    /// Starts an SDEdit run from `image` (values in [-1, 1], one per image of the request):
    /// the step that `strength` picks ([`super::sdedit_start_index`]), with x_t = α · image +
    /// σ · ε at that step's noise level ([`Scheduler::noise_level`]) and ε the x_T drawn from
    /// the seed. The run then takes the remaining steps. Call it before the first step.
    ///
    /// A run that starts at the first step (strength 1) starts from ε alone, as plain sampling
    /// does: every sampler treats its first x_t as pure noise (the image's weight there, α ≈
    /// 0.006 for DDPM's schedule, is the schedule's residual signal, which plain sampling
    /// ignores too), so strength 1 is plain sampling from the same seed, exactly.
    ///
    /// # Shapes
    /// - `image`: like the sample, `[images, channels, height, width]`.
    pub fn with_init_image<S: Scheduler>(
        mut self,
        scheduler: &S,
        image: Tensor<4>,
        strength: f64,
    ) -> Result<Self> {
        if image.dims() != self.sample.dims() {
            return Err(Error::Sampler(format!(
                "the init image has shape {:?}; this request needs {:?}",
                image.dims(),
                self.sample.dims()
            )));
        }
        if self.step_index != 0 {
            return Err(Error::Sampler(
                "the init image must be set before the first step".into(),
            ));
        }
        let start = super::sdedit_start_index(scheduler.timesteps().len(), strength)?;
        if start > 0 {
            let (alpha, sigma) = scheduler.noise_level(start);
            let noise = self.sample.clone();
            self.sample = image.cast(noise.dtype()).mul_scalar(alpha) + noise.mul_scalar(sigma);
        }
        self.step_index = start;
        Ok(self)
    }

    /// Starts `edit` ([`Self::with_init_image`] or [`Self::with_inpainting`]), its one image
    /// (and mask) used for every image of the run. Call it before the first step.
    pub fn with_edit<S: Scheduler>(self, scheduler: &S, edit: &Edit) -> Result<Self> {
        let [n, c, h, w] = self.sample.dims();
        let device = self.sample.device();
        let tensor = |values: &[f32], what: &str| {
            if values.len() != c * h * w {
                return Err(Error::Sampler(format!(
                    "{what} holds {} values; a {c}×{h}×{w} image needs {}",
                    values.len(),
                    c * h * w
                )));
            }
            let data = TensorData::new(values.repeat(n), [n, c, h, w]);
            Ok(Tensor::<4>::from_data(data, &device))
        };
        match edit {
            Edit::Vary { image, strength } => {
                self.with_init_image(scheduler, tensor(image, "the init image")?, *strength)
            }
            Edit::Inpaint { image, keep } => {
                self.with_inpainting(tensor(image, "the image")?, tensor(keep, "the mask")?)
            }
        }
    }

    /// Starts from `latents` instead of the x_T drawn from the seed (diffusers' `latents`
    /// argument): the same images a PyTorch run from that x_T gives. The generator still
    /// supplies every later step's noise. Call it before the first step.
    ///
    /// # Shapes
    /// - `latents`: like the sample, `[images, channels, height, width]`.
    pub fn with_latents(mut self, latents: Tensor<4>) -> Result<Self> {
        if latents.dims() != self.sample.dims() {
            return Err(Error::Sampler(format!(
                "latents have shape {:?}; this request needs {:?}",
                latents.dims(),
                self.sample.dims()
            )));
        }
        if self.step_index != 0 {
            return Err(Error::Sampler(
                "latents must be set before the first step".into(),
            ));
        }
        self.sample = latents.cast(self.sample.dtype());
        Ok(self)
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.step_index
    }

    /// Images in the run.
    pub fn num_images(&self) -> usize {
        self.sample.dims()[0]
    }

    /// Rows of each model call: the images, twice when guided (both passes).
    pub fn rows(&self) -> usize {
        match self.pass {
            Pass::Guided(_) => 2 * self.num_images(),
            _ => self.num_images(),
        }
    }

    /// The current sample x_t (the final image once every step is done), on the device.
    pub fn sample(&self) -> &Tensor<4> {
        &self.sample
    }

    /// The next step's model call, or `None` when every step of `scheduler` is done.
    pub fn query<S: Scheduler>(&self, scheduler: &S) -> Option<ModelQuery> {
        let &t = scheduler.timesteps().get(self.step_index)?;
        let x = self.sample.clone();
        let rows = self.rows();
        let x = match self.pass {
            Pass::Guided(_) => Tensor::cat(vec![x.clone(), x], 0),
            _ => x,
        };
        let class_labels = match &self.pass {
            Pass::Unconditional => None,
            Pass::Single(labels) | Pass::Guided(labels) => Some(labels.clone()),
        };
        Some(ModelQuery {
            x,
            timesteps: vec![t as f64; rows],
            class_labels,
        })
    }

    /// Takes the prediction for [`Self::query`]'s model call (`[rows, c, h, w]`), combines
    /// the guidance passes and runs `scheduler`'s step (drawing its noise from this run's
    /// generator).
    ///
    /// # Panics
    /// When every step is done already (`query` returned `None`).
    pub fn advance<S: Scheduler>(&mut self, scheduler: &S, prediction: Tensor<4>) -> StepOutput {
        let timesteps = scheduler.timesteps();
        let t = timesteps[self.step_index];
        let output = match self.pass {
            Pass::Guided(_) => {
                let mut halves = prediction.chunk(2, 0).into_iter();
                let cond = halves.next().expect("two halves");
                let uncond = halves.next().expect("two halves");
                classifier_free_guidance(cond, uncond, self.guidance_scale)
            }
            _ => prediction,
        };
        let x = self.sample.clone();
        let draws = scheduler.noise_draws(self.step_index);
        let noise = (draws > 0).then(|| {
            let [b, c, h, w] = x.dims();
            self.rng.normal_tensor([draws * b, c, h, w], &x.device())
        });
        let out = scheduler.step(&mut self.state, output, self.step_index, x, noise);
        self.sample = out.prev_sample;
        let report = StepOutput {
            step_index: self.step_index,
            num_steps: timesteps.len(),
            timestep: t,
            pred_original_sample: out.pred_original_sample,
        };
        self.step_index += 1;
        report
    }
}

/// A sampling run in progress: a [`SamplingState`] with its model and scheduler.
pub struct Sampling<'a, M: Denoiser, S: Scheduler> {
    model: &'a M,
    scheduler: &'a S,
    state: SamplingState,
}

impl<'a, M: Denoiser, S: Scheduler> Sampling<'a, M, S> {
    /// Validates the request and draws x_T ~ N(0, I) from the seeded host generator.
    pub fn new(
        model: &'a M,
        scheduler: &'a S,
        request: &SampleRequest,
        device: &Device,
    ) -> Result<Self> {
        let state = SamplingState::new(model.num_classes(), request, device)?;
        Ok(Self {
            model,
            scheduler,
            state,
        })
    }

    /// Makes this an inpainting run ([`SamplingState::with_inpainting`]).
    pub fn with_inpainting(mut self, image: Tensor<4>, keep: Tensor<4>) -> Result<Self> {
        self.state = self.state.with_inpainting(image, keep)?;
        Ok(self)
    }

    /// Starts an SDEdit run from `image` ([`SamplingState::with_init_image`]).
    pub fn with_init_image(mut self, image: Tensor<4>, strength: f64) -> Result<Self> {
        self.state = self
            .state
            .with_init_image(self.scheduler, image, strength)?;
        Ok(self)
    }

    /// Starts `edit` ([`SamplingState::with_edit`]).
    pub fn with_edit(mut self, edit: &Edit) -> Result<Self> {
        self.state = self.state.with_edit(self.scheduler, edit)?;
        Ok(self)
    }

    /// Starts from `latents` instead of the seed's x_T ([`SamplingState::with_latents`]).
    pub fn with_latents(mut self, latents: Tensor<4>) -> Result<Self> {
        self.state = self.state.with_latents(latents)?;
        Ok(self)
    }

    /// Total number of steps.
    pub fn num_steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// Steps done so far.
    pub fn steps_done(&self) -> usize {
        self.state.steps_done()
    }

    /// The current sample x_t (the final image once every step is done), on the device.
    pub fn sample(&self) -> &Tensor<4> {
        self.state.sample()
    }

    /// Runs the next step, or returns `None` when sampling is finished.
    pub fn step(&mut self) -> Option<StepOutput> {
        let q = self.state.query(self.scheduler)?;
        let prediction = self
            .model
            .predict(q.x, &q.timesteps, q.class_labels.as_deref());
        Some(self.state.advance(self.scheduler, prediction))
    }

    /// Runs every remaining step, calling `progress` after each, and returns the final
    /// sample (on the device, values nominally in [-1, 1]).
    pub fn run(mut self, mut progress: impl FnMut(&StepOutput)) -> Tensor<4> {
        while let Some(out) = self.step() {
            progress(&out);
        }
        self.state.sample
    }
}

/// Reads a sample back to the host as `f32` values, synchronously (native targets; the
/// browser reads asynchronously instead).
pub fn to_host(t: Tensor<4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}
