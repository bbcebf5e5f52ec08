//! Browser bindings for the shared `diffusion` crate: a [`Sampler`] created from weight bytes
//! and config JSON on WebGPU (Burn's wgpu backend pinned to WebGPU) or on the CPU (Burn's flex
//! backend compiled to wasm). The math is the shared crate's; this file only converts between
//! JavaScript and Rust and reads tensors back asynchronously (synchronous reads panic on
//! WebGPU).
#![cfg(target_arch = "wasm32")]

use artifacts::pixels::{grid_rgb, to_rgba, GridPixels};
use burn::tensor::{Device, Tensor};
use diffusion::sampler::{
    plan_edit, ClassChoice, Edit, EditFields, EditOptions, GridLabels, SamplerKind, SamplerSettings,
};
use diffusion::weights::load_model_from_bytes;
use diffusion::{ModelConfig, SampleRequest, Sampling, Scheduler, UNet};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

// TypeScript shapes of the options and results passed as plain objects (pkg/web.d.ts).
#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** Options of `Sampler.sample` (camelCase; absent fields take the defaults shown). */
export interface SampleOptions {
  /** A class index, `"all"` (one row per class) or `null`/`"none"` (unconditional). Default null. */
  classLabel?: number | "all" | "none" | null;
  /** Images (per class for `"all"`). Default 1. */
  numImages?: number;
  /** Classifier-free guidance scale w. Default 3. */
  guidanceScale?: number;
  /** Denoising steps. Default 50. */
  steps?: number;
  /** DDIM η. Default 0. */
  eta?: number;
  /** Seed, a whole number up to 2^53 − 1. Default 0. */
  seed?: number;
  /** Default "ddpm" (the library's default: stochastic, clean backgrounds). */
  sampler?: "ddim" | "ddpm" | "dpmsolver++" | "sde-dpmsolver++";
  /** DPM-Solver++ with Karras noise levels. Default false. */
  karrasSigmas?: boolean;
  /** x̂₀ preview every this many steps (0 = never). Default 1. */
  previewEvery?: number;
  /** Start from this image instead of noise: SDEdit (variations, sketch to image) with
   *  `strength`, or, with `mask`, RePaint inpainting. RGBA at the model's size, as a canvas'
   *  `ImageData` holds it (`{width, height, pixels: imageData.data}`); grey models read its
   *  luma, as `trainer sample --init-image` reads a PNG. */
  initImage?: RgbaImage;
  /** SDEdit: how much of the schedule to run, in (0, 1] (1 = from noise alone). Default 0.8. */
  strength?: number;
  /** Inpainting: RGBA at the model's size, white (above mid grey) where `initImage` is
   *  regenerated, black where it is kept. Takes RePaint's steps: leave `sampler` and
   *  `karrasSigmas` out. */
  mask?: RgbaImage;
  /** Inpainting: steps jumped back up at each jump point (RePaint's j). Default 10. */
  jumpLength?: number;
  /** Inpainting: resamplings per jump point (RePaint's r; 1 = no jumps). Default 10. */
  jumpNSample?: number;
}

/** An RGBA image for a canvas (`new ImageData(pixels, width, height)`). */
export interface RgbaImage {
  width: number;
  height: number;
  pixels: Uint8ClampedArray;
}

/** What `Sampler.sample` returns. */
export interface SampleResult {
  /** RGBA, image after image (count · height · width · 4 bytes). */
  pixels: Uint8ClampedArray;
  /** Values in [-1, 1], shape [count, channels, height, width]. */
  values: Float32Array;
  count: number;
  /** Columns of the grid `trainer sample` draws this batch in. */
  cols: number;
  channels: number;
  width: number;
  height: number;
  totalMs: number;
  firstStepMs: number;
  perStepMs: number;
  backend: "webgpu" | "cpu";
}

/** Called after each step; return `false` to cancel. */
export type SampleProgress = (step: number, total: number, preview: RgbaImage | null) => boolean | void;
"#;

/// `initThreadPool(n)` (a Promise): starts n − 1 Web Workers for rayon, in the threads bundle only.
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// The most images one call samples (the page offers 1–64).
pub const MAX_IMAGES: usize = 256;

/// A class as JavaScript gives it: an index, or `"all"` / `"none"` / `"3"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClassOption {
    Index(usize),
    Name(String),
}

/// Sampling options from JavaScript (camelCase).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SampleOptions {
    /// Class index, `"all"` (one row per class), or null/absent/`"none"` for unconditional:
    /// `trainer sample --class`.
    #[serde(default)]
    class_label: Option<ClassOption>,
    /// Images (per class with `"all"`): `trainer sample --num`.
    #[serde(default = "one")]
    num_images: usize,
    /// Guidance scale w (1 = conditional, 0 = unconditional).
    #[serde(default = "three")]
    guidance_scale: f64,
    /// Denoising steps.
    #[serde(default = "fifty")]
    steps: usize,
    /// DDIM η.
    #[serde(default)]
    eta: f64,
    /// Seed (a JS number: integers up to 2^53 are exact).
    #[serde(default)]
    seed: f64,
    /// "ddim", "ddpm", "dpmsolver++" or "sde-dpmsolver++" (absent: the library's default).
    #[serde(default)]
    sampler: Option<String>,
    /// DPM-Solver++ with Karras noise levels.
    #[serde(default)]
    karras_sigmas: bool,
    /// Read x̂₀ back for a preview every this many steps (and at the last); 0 = never. Each
    /// preview is an asynchronous device read, so fewer previews keep WebGPU busier.
    #[serde(default = "one")]
    preview_every: usize,
    /// SDEdit, or with `mask` inpainting, from this image: `trainer sample --init-image`.
    #[serde(default)]
    init_image: Option<ImageInput>,
    /// SDEdit's strength: `--strength`.
    #[serde(default)]
    strength: Option<f64>,
    /// Inpainting's mask, white = regenerate: `--mask`.
    #[serde(default)]
    mask: Option<ImageInput>,
    /// RePaint's jump length: `--jump-length`.
    #[serde(default)]
    jump_length: Option<usize>,
    /// RePaint's resamplings per jump point: `--jump-n-sample`.
    #[serde(default)]
    jump_n_sample: Option<usize>,
}

/// An RGBA image from JavaScript (`{width, height, pixels}`; `pixels` an array, `Uint8Array` or
/// `Uint8ClampedArray` such as `ImageData.data`).
#[derive(Debug, Deserialize)]
struct ImageInput {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl ImageInput {
    /// Model values `[channels, size, size]`, read as `trainer sample` reads a PNG.
    fn values(&self, what: &str, channels: usize, size: usize) -> Result<Vec<f32>, JsError> {
        if (self.width, self.height) != (size, size) {
            return Err(js_err(format!(
                "{what} is {}×{}; the model takes {size}×{size}",
                self.width, self.height
            )));
        }
        if self.pixels.len() != size * size * 4 {
            return Err(js_err(format!(
                "{what} holds {} bytes; {size}×{size} RGBA needs {}",
                self.pixels.len(),
                size * size * 4
            )));
        }
        artifacts::pixels::rgba_to_values(&self.pixels, channels)
            .map_err(|e| js_err(format!("{what}: {e}")))
    }
}

/// The options' names for the edit, in error messages.
const EDIT_FIELDS: EditFields = EditFields {
    init_image: "initImage",
    mask: "mask",
    strength: "strength",
    jump_length: "jumpLength",
    jump_n_sample: "jumpNSample",
    sampler: "sampler",
    steps: "steps",
};

fn one() -> usize {
    1
}

fn three() -> f64 {
    3.0
}
fn fifty() -> usize {
    50
}

/// The largest RGBA grid `gridRgba` draws, bytes.
const MAX_GRID_BYTES: f64 = (1u64 << 28) as f64;

/// The padding between cells of a preview grid.
const PREVIEW_PAD: u32 = 1;

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A backend this bundle was built without (see web/build.sh).
#[allow(dead_code)] // a bundle with both backends never calls it
fn not_in_bundle(backend: &str) -> JsError {
    js_err(format!(
        "backend `{backend}` is not in this bundle (pkg/web.js has cpu, pkg/webgpu/web.js both)"
    ))
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Lets the browser's event loop run (repaint, input, the progress bar): CPU-wasm sampling
/// would otherwise hold the main thread for the whole call.
pub async fn yield_to_browser() -> Result<(), JsError> {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let set_timeout = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into())
            .ok()
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&JsValue::NULL, &resolve, &0.into());
            }
            None => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    });
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map(|_| ())
        .map_err(|e| js_err(format!("yield failed: {e:?}")))
}

/// Sets `key` on a plain object.
fn set(o: &js_sys::Object, key: &str, value: JsValue) -> Result<(), JsError> {
    js_sys::Reflect::set(o, &key.into(), &value)
        .map(|_| ())
        .map_err(|_| js_err(format!("setting `{key}` on the result failed")))
}

/// `{width, height, pixels: Uint8ClampedArray (RGBA)}` for a canvas.
fn grid_object(g: &GridPixels) -> Result<JsValue, JsError> {
    let o = js_sys::Object::new();
    set(&o, "width", g.width.into())?;
    set(&o, "height", g.height.into())?;
    let rgba = js_sys::Uint8ClampedArray::from(g.to_rgba().as_slice());
    set(&o, "pixels", rgba.into())?;
    Ok(o.into())
}

/// Lays out sampled `values` (`[count, channels, size, size]`, as `sample` returns them) as
/// the grid `trainer sample` writes: `cols` columns, `pad` grey pixels between cells, each
/// pixel drawn `scale × scale`. Returns `{width, height, pixels: Uint8ClampedArray (RGBA)}`.
#[wasm_bindgen(js_name = gridRgba, unchecked_return_type = "RgbaImage")]
pub fn grid_rgba(
    values: &[f32],
    channels: usize,
    size: usize,
    cols: usize,
    pad: u32,
    scale: u32,
) -> Result<JsValue, JsError> {
    let per = size.checked_mul(size).and_then(|p| p.checked_mul(channels));
    let per = match per {
        Some(per) if (channels == 1 || channels == 3) && per > 0 && values.len() % per == 0 => per,
        _ => {
            return Err(js_err(format!(
                "{} values are not whole {channels}×{size}×{size} images",
                values.len()
            )))
        }
    };
    if values.is_empty() || scale == 0 || scale > 64 || pad > 64 {
        return Err(js_err(format!(
            "{} values, scale {scale}, pad {pad}: expected some images, scale 1..=64, pad 0..=64",
            values.len()
        )));
    }
    let n = values.len() / per;
    let cols = cols.clamp(1, n);
    // The grid's bytes (f64: no overflow), capped well below wasm's 4 GiB.
    let side = |cells: usize| cells as f64 * (size as f64 * scale as f64 + pad as f64) + pad as f64;
    let bytes = side(cols) * side(n.div_ceil(cols)) * 4.0;
    if bytes > MAX_GRID_BYTES {
        return Err(js_err(format!(
            "a {n}-image grid at scale {scale} needs {:.0} MB: at most {:.0} MB",
            bytes / 1e6,
            MAX_GRID_BYTES / 1e6
        )));
    }
    let shape = [n, channels, size, size];
    grid_object(&grid_rgb(values, shape, cols, pad, scale))
}

async fn read(t: Tensor<4>) -> Result<Vec<f32>, JsError> {
    let data = t.into_data_async().await.map_err(js_err)?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| js_err(format!("{e:?}")))
}

/// The largest model forward pass a page samples, in FLOPs per image: 2.5× the DDPM CIFAR-10
/// U-Net's 12.4 GFLOP (35.7 M parameters, 32×32 RGB), which takes about half a minute for a
/// 50-step image on a laptop's CPU through WebAssembly. A 256×256 model (google/ddpm-celebahq-256:
/// over 100 GFLOP per step) would keep the tab busy for many minutes per image.
pub const MAX_BROWSER_FLOPS: f64 = 32e9;

/// The largest weights file a page loads: 1 GiB of a 4 GiB wasm32 memory.
pub const MAX_BROWSER_WEIGHT_BYTES: usize = 1 << 30;

/// Refuses, with a one-line reason, a model too large to sample in a browser tab.
pub fn browser_budget(config: &ModelConfig, weight_bytes: usize) -> Result<(), String> {
    if weight_bytes > MAX_BROWSER_WEIGHT_BYTES {
        return Err(format!(
            "the weights are {:.0} MB, more than a browser tab can hold ({:.0} MB); sample \
             this model natively (trainer sample, trainer serve's API)",
            weight_bytes as f64 / 1e6,
            MAX_BROWSER_WEIGHT_BYTES as f64 / 1e6
        ));
    }
    let u = &config.unet;
    let flops = diffusion::unet::flops::unet_forward_flops(u);
    if flops > MAX_BROWSER_FLOPS {
        return Err(format!(
            "this {}×{}×{} model needs {:.0} GFLOP per image per step, more than a browser tab              can afford ({:.0}); sample it natively (trainer sample, trainer serve's API)",
            u.in_channels,
            u.resolution,
            u.resolution,
            flops / 1e9,
            MAX_BROWSER_FLOPS / 1e9
        ));
    }
    Ok(())
}

#[cfg(feature = "webgpu")]
thread_local! {
    /// The page's WebGPU device, once initialised: Burn registers one runtime per device, so a
    /// second model (the page switching models, or a second sampler) must reuse it.
    static WEBGPU_DEVICE: std::cell::RefCell<Option<Device>> = const { std::cell::RefCell::new(None) };
}

/// The WebGPU device, initialised on first use.
#[cfg(feature = "webgpu")]
async fn webgpu_device() -> Result<Device, JsError> {
    if let Some(d) = WEBGPU_DEVICE.with(|c| c.borrow().clone()) {
        return Ok(d);
    }
    let d = Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_async()
        .await
        .map_err(|e| js_err(format!("WebGPU is not available: {e}")))?;
    WEBGPU_DEVICE.with(|c| *c.borrow_mut() = Some(d.clone()));
    Ok(d)
}

/// A loaded model, ready to sample.
#[wasm_bindgen]
pub struct Sampler {
    model: UNet,
    config: ModelConfig,
    device: Device,
    backend: String,
}

impl Sampler {
    /// The edit `o` asks for and the scheduler it runs on, checked as the HTTP API checks its
    /// fields ([`plan_edit`]).
    fn edit(
        &self,
        o: &SampleOptions,
        settings: &SamplerSettings,
    ) -> Result<(Option<Edit>, diffusion::sampler::AnyScheduler), JsError> {
        let [c, size, _] = self.config.unet.image_shape();
        let read = |image: &Option<ImageInput>, what: &str, channels: usize| {
            image
                .as_ref()
                .map(|i| i.values(what, channels, size))
                .transpose()
        };
        let options = EditOptions {
            init_image: read(&o.init_image, "initImage", c)?,
            mask: read(&o.mask, "mask", 1)?,
            strength: o.strength,
            jump_length: o.jump_length,
            jump_n_sample: o.jump_n_sample,
            sampler_given: o.sampler.is_some() || o.karras_sigmas,
        };
        plan_edit(&self.config, settings, options, &EDIT_FIELDS).map_err(js_err)
    }
}

#[wasm_bindgen]
impl Sampler {
    /// Loads safetensors `weights` (f32 or f16) with their `config_json` on `backend`:
    /// `"webgpu"` or `"cpu"`.
    pub async fn create(
        weights: Vec<u8>,
        config_json: String,
        backend: String,
    ) -> Result<Sampler, JsError> {
        console_error_panic_hook::set_once();
        let config = ModelConfig::from_json(&config_json, "config").map_err(js_err)?;
        browser_budget(&config, weights.len()).map_err(js_err)?;
        let device = match backend.as_str() {
            #[cfg(feature = "webgpu")]
            "webgpu" => webgpu_device().await?,
            #[cfg(feature = "cpu")]
            "cpu" => Device::flex(),
            #[cfg(not(feature = "webgpu"))]
            "webgpu" => return Err(not_in_bundle("webgpu")),
            #[cfg(not(feature = "cpu"))]
            "cpu" => return Err(not_in_bundle("cpu")),
            other => {
                return Err(js_err(format!(
                    "unknown backend `{other}` (expected webgpu or cpu)"
                )))
            }
        };
        let model = load_model_from_bytes(&config, weights, "weights", &device).map_err(js_err)?;
        Ok(Sampler {
            model,
            config,
            device,
            backend,
        })
    }

    /// The backend in use (`webgpu` or `cpu`).
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// Image height and width.
    #[wasm_bindgen(getter, js_name = imageSize)]
    pub fn image_size(&self) -> usize {
        self.config.unet.resolution
    }

    /// Image channels: 1 (grey) or 3 (RGB).
    #[wasm_bindgen(getter)]
    pub fn channels(&self) -> usize {
        self.config.unet.image_shape()[0]
    }

    /// Number of classes (0 for an unconditional model).
    #[wasm_bindgen(getter, js_name = numClasses)]
    pub fn num_classes(&self) -> usize {
        self.config.unet.num_classes.unwrap_or(0)
    }

    /// The name of each class (the model config's `class_names`, else `"0"`, `"1"`, …).
    #[wasm_bindgen(getter, js_name = classNames)]
    pub fn class_names(&self) -> Vec<String> {
        (0..self.num_classes())
            .map(|k| self.config.class_name(k))
            .collect()
    }

    /// The inference timesteps a sampler setting visits (to compare with native ones).
    pub fn timesteps(&self, sampler: &str, steps: usize) -> Result<Vec<u32>, JsError> {
        let settings = SamplerSettings {
            sampler: SamplerKind::from_name(sampler).map_err(js_err)?,
            num_inference_steps: steps,
            eta: 0.0,
            use_karras_sigmas: false,
        };
        let s = self.config.scheduler(&settings).map_err(js_err)?;
        Ok(s.timesteps().iter().map(|&t| t as u32).collect())
    }

    /// ᾱ_t of the model's schedule, computed in the browser (to compare with native ones).
    #[wasm_bindgen(js_name = alphasCumprod)]
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>, JsError> {
        Ok(self.config.schedule.build().map_err(js_err)?.alphas_cumprod)
    }

    /// Samples a batch in one run, as `trainer sample` does for the same settings. `options`:
    /// `{classLabel, numImages, guidanceScale, steps, eta, seed, sampler, karrasSigmas,
    /// previewEvery}`, and for an edit `{initImage, strength}` (SDEdit: `--init-image
    /// --strength`) or `{initImage, mask, jumpLength, jumpNSample}` (RePaint inpainting). `onProgress(step, total, preview | null)` is called after each step, with
    /// x̂₀ as a grid (`{width, height, pixels}`, 1 pixel apart) every `previewEvery` steps;
    /// returning `false` cancels the run (the call then fails with "cancelled").
    /// Returns `{pixels: Uint8ClampedArray (RGBA, image after image), values: Float32Array
    /// ([count, channels, height, width]), count, cols, channels, width, height, totalMs,
    /// firstStepMs, perStepMs, backend}`.
    #[wasm_bindgen(unchecked_return_type = "SampleResult")]
    pub async fn sample(
        &self,
        #[wasm_bindgen(unchecked_param_type = "SampleOptions")] options: JsValue,
        #[wasm_bindgen(unchecked_param_type = "SampleProgress | null | undefined")]
        on_progress: Option<js_sys::Function>,
    ) -> Result<JsValue, JsError> {
        let o: SampleOptions = serde_wasm_bindgen::from_value(options).map_err(js_err)?;
        if !(o.seed.is_finite()
            && o.seed >= 0.0
            && o.seed.fract() == 0.0
            && o.seed <= 9007199254740991.0)
        {
            return Err(js_err(format!(
                "seed {} must be a whole number in 0..=2^53-1",
                o.seed
            )));
        }
        let sampler = match &o.sampler {
            Some(name) => SamplerKind::from_name(name).map_err(js_err)?,
            None => SamplerKind::default(),
        };
        let settings = SamplerSettings {
            sampler,
            num_inference_steps: o.steps,
            eta: o.eta,
            use_karras_sigmas: o.karras_sigmas,
        };
        let (edit, scheduler) = self.edit(&o, &settings)?;
        if o.num_images > MAX_IMAGES {
            return Err(js_err(format!(
                "numImages {}: at most {MAX_IMAGES}",
                o.num_images
            )));
        }
        let choice = match &o.class_label {
            None => ClassChoice::Unconditional,
            Some(ClassOption::Index(k)) => ClassChoice::Class(*k),
            Some(ClassOption::Name(name)) => {
                ClassChoice::parse_named(name, self.config.class_names.as_deref())
                    .map_err(js_err)?
            }
        };
        let GridLabels { labels, cols } = choice
            .grid(o.num_images, self.config.unet.num_classes)
            .map_err(js_err)?;
        if labels.len() > MAX_IMAGES {
            return Err(js_err(format!(
                "{} images in one call: at most {MAX_IMAGES}",
                labels.len()
            )));
        }
        let shape = self.config.unet.image_shape();
        let batch = [labels.len(), shape[0], shape[1], shape[2]];
        let request = SampleRequest {
            image_shape: shape,
            class_labels: labels,
            guidance_scale: o.guidance_scale,
            seed: o.seed as u64,
        };
        let started = now_ms();
        let mut first_step_ms = 0.0;
        let mut sampling =
            Sampling::new(&self.model, &scheduler, &request, &self.device).map_err(js_err)?;
        if let Some(edit) = &edit {
            sampling = sampling.with_edit(edit).map_err(js_err)?;
        }
        let first_index = sampling.steps_done();
        while let Some(out) = sampling.step() {
            yield_to_browser().await?;
            if let Some(cb) = &on_progress {
                let k = o.preview_every;
                let last = out.step_index + 1 == out.num_steps;
                let preview = if k > 0 && ((out.step_index + 1) % k == 0 || last) {
                    let x0 = read(out.pred_original_sample).await?;
                    grid_object(&grid_rgb(&x0, batch, cols, PREVIEW_PAD, 1))?
                } else {
                    JsValue::NULL
                };
                let verdict = cb
                    .call3(
                        &JsValue::NULL,
                        &(out.step_index as u32).into(),
                        &(out.num_steps as u32).into(),
                        &preview,
                    )
                    .map_err(|e| js_err(format!("onProgress threw: {e:?}")))?;
                if verdict == JsValue::FALSE {
                    return Err(js_err("cancelled"));
                }
            }
            if out.step_index == first_index {
                if on_progress.is_none() {
                    // Make the first-step time honest: wait for the device.
                    read(sampling.sample().clone()).await?;
                }
                first_step_ms = now_ms() - started;
            }
        }
        let values = read(sampling.sample().clone()).await?;
        let total_ms = now_ms() - started;
        let steps = scheduler.timesteps().len() - first_index;
        let rgba = to_rgba(&values, batch);
        let result = js_sys::Object::new();
        let pixels = js_sys::Uint8ClampedArray::from(rgba.as_slice());
        set(&result, "pixels", pixels.into())?;
        let values = js_sys::Float32Array::from(values.as_slice());
        set(&result, "values", values.into())?;
        set(&result, "count", (batch[0] as u32).into())?;
        set(&result, "cols", (cols as u32).into())?;
        set(&result, "channels", (shape[0] as u32).into())?;
        set(&result, "width", (shape[2] as u32).into())?;
        set(&result, "height", (shape[1] as u32).into())?;
        set(&result, "totalMs", total_ms.into())?;
        set(&result, "firstStepMs", first_step_ms.into())?;
        let per_step_ms = (total_ms - first_step_ms) / (steps.max(2) - 1) as f64;
        set(&result, "perStepMs", per_step_ms.into())?;
        set(&result, "backend", self.backend.clone().into())?;
        Ok(result.into())
    }
}
