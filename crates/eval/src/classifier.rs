//! A small CNN classifier for the evaluation's domain metrics: class-conditional accuracy of
//! guided samples, a classifier score in the Inception-Score form, and a domain FID on its
//! penultimate features. It is trained on a dataset's train split and judged on its test
//! split (`trainer train-classifier`).
//!
//! Architecture: conv3×3(c→b) → ReLU → conv3×3(b→2b) → ReLU → max-pool 2 → conv3×3(2b→4b) →
//! ReLU → max-pool 2 → adaptive average pool to 7×7 → linear(196b→f) → ReLU (the f-d
//! "penultimate" features) → dropout → linear(f→classes). Inputs are images in [-1, 1].

use std::path::{Path, PathBuf};

use artifacts::write_atomic;
use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{adaptive_avg_pool2d, max_pool2d};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use datasets::loader::{epoch_permutation, mix_seed};
use datasets::Dataset;
use diffusion::weights::check_apply;
use portable_rng::NoiseRng;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// Spatial size the last feature map is pooled to before the linear layers.
const POOLED: usize = 7;

/// Shape of a [`Classifier`].
#[derive(Config, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// Image channels (1 or 3).
    pub in_channels: usize,
    /// Image side (square images).
    pub resolution: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Channels of the first convolution (then 2× and 4×).
    #[config(default = 16)]
    pub base_channels: usize,
    /// Width of the penultimate features.
    #[config(default = 128)]
    pub feature_dim: usize,
    /// Dropout before the last layer (training only).
    #[config(default = 0.3)]
    pub dropout: f64,
}

impl ClassifierConfig {
    /// Builds a randomly initialised classifier on `device`.
    pub fn init(&self, device: &Device) -> Result<Classifier> {
        if self.in_channels == 0
            || self.resolution < 4
            || self.num_classes < 2
            || self.base_channels == 0
            || self.feature_dim == 0
        {
            return Err(EvalError::Invalid(format!(
                "invalid classifier config {self:?}"
            )));
        }
        let b = self.base_channels;
        let conv = |i: usize, o: usize| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Ok(Classifier {
            conv1: conv(self.in_channels, b),
            conv2: conv(b, 2 * b),
            conv3: conv(2 * b, 4 * b),
            fc1: LinearConfig::new(4 * b * POOLED * POOLED, self.feature_dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc2: LinearConfig::new(self.feature_dim, self.num_classes).init(device),
        })
    }
}

/// The classifier (see the module docs).
#[derive(Module, Debug)]
pub struct Classifier {
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// Third 3×3 convolution (after the first pool).
    pub conv3: Conv2d,
    /// To the penultimate features.
    pub fc1: Linear,
    /// Dropout on the features (training only).
    pub dropout: Dropout,
    /// To the class logits.
    pub fc2: Linear,
}

impl Classifier {
    /// Penultimate features.
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, h, w]` in [-1, 1]
    /// - output: `[batch, feature_dim]`
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let pool = |x| max_pool2d(x, MaxPoolOptions::new([2, 2]));
        let x = relu(self.conv1.forward(x));
        let x = pool(relu(self.conv2.forward(x)));
        let x = pool(relu(self.conv3.forward(x)));
        let [_, _, h, w] = x.dims();
        let x = if (h, w) == (POOLED, POOLED) {
            x
        } else {
            adaptive_avg_pool2d(x, [POOLED, POOLED])
        };
        relu(self.fc1.forward(x.flatten(1, 3)))
    }

    /// Class logits.
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, h, w]` in [-1, 1]
    /// - output: `[batch, num_classes]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.dropout.forward(self.features(x)))
    }
}

/// What is saved beside the weights (`NAME.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierInfo {
    /// Channels.
    pub in_channels: usize,
    /// Image side.
    pub resolution: usize,
    /// Classes.
    pub num_classes: usize,
    /// First-convolution width.
    pub base_channels: usize,
    /// Penultimate width.
    pub feature_dim: usize,
    /// The dataset it was trained on (as given on the command line).
    pub dataset: String,
    /// Accuracy on that dataset's test split.
    pub test_accuracy: f64,
    /// The training settings.
    pub training: ClassifierTraining,
}

impl ClassifierInfo {
    fn config(&self) -> ClassifierConfig {
        ClassifierConfig::new(self.in_channels, self.resolution, self.num_classes)
            .with_base_channels(self.base_channels)
            .with_feature_dim(self.feature_dim)
    }
}

/// Classifier training settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassifierTraining {
    /// Passes over the train split.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// AdamW learning rate (the last epoch uses a tenth of it).
    pub lr: f64,
    /// Random shifts of up to this many pixels (0 = none).
    pub max_shift: usize,
    /// Random horizontal flips (clothes, not digits).
    pub hflip: bool,
    /// Seed of initialisation, order, augmentation and dropout.
    pub seed: u64,
}

impl Default for ClassifierTraining {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 64,
            lr: 2e-3,
            max_shift: 2,
            hflip: false,
            seed: 0,
        }
    }
}

impl ClassifierTraining {
    /// Checks the settings (one clear error line).
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(EvalError::Invalid(format!(
                "classifier training needs epochs ≥ 1, batch size ≥ 1 and a finite lr > 0 \
                 (got {} epochs, batch {}, lr {})",
                self.epochs, self.batch_size, self.lr
            )));
        }
        Ok(())
    }
}

/// `NAME.json` beside `NAME.safetensors`.
pub fn info_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Images `idx` of `ds` as a `[n, c, h, w]` tensor in [-1, 1], with random shifts / flips.
fn batch_tensor(
    ds: &Dataset,
    idx: &[usize],
    augment: Option<(&mut NoiseRng, usize, bool)>,
    device: &Device,
) -> Tensor<4> {
    let [c, h, w] = ds.image_shape();
    let mut values = Vec::with_capacity(idx.len() * c * h * w);
    let mut augment = augment;
    for &i in idx {
        let img = ds.image_f32(i);
        let (dy, dx, flip) = match augment.as_mut() {
            Some((rng, s, hflip)) => {
                let s = *s as i64;
                let dy = rng.below(2 * s as u64 + 1) as i64 - s;
                let dx = rng.below(2 * s as u64 + 1) as i64 - s;
                (dy, dx, *hflip && rng.uniform() < 0.5)
            }
            None => (0, 0, false),
        };
        for ch in 0..c {
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let (sy, mut sx) = (y - dy, x - dx);
                    if flip {
                        sx = w as i64 - 1 - sx;
                    }
                    let v = if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                        -1.0 // background
                    } else {
                        img[(ch * h + sy as usize) * w + sx as usize]
                    };
                    values.push(v);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [idx.len(), c, h, w]), device)
}

/// Progress of classifier training.
#[derive(Debug, Clone, Copy)]
pub struct ClassifierProgress {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Images done in this epoch.
    pub done: usize,
    /// Images per epoch.
    pub total: usize,
    /// Mean loss of the epoch so far.
    pub loss: f64,
}

/// Trains a classifier on `train` and measures it on `test`. `dataset` names the data in the
/// saved info. Runs on `device`'s autodiff form.
pub fn train_classifier(
    train: &Dataset,
    test: &Dataset,
    dataset: &str,
    settings: &ClassifierTraining,
    device: &Device,
    mut progress: impl FnMut(ClassifierProgress),
) -> Result<(Classifier, ClassifierInfo)> {
    if train.image_shape() != test.image_shape() || train.num_classes() != test.num_classes() {
        return Err(EvalError::Invalid(
            "train and test splits differ in shape or classes".into(),
        ));
    }
    settings.validate()?;
    let [c, h, w] = train.image_shape();
    if h != w {
        return Err(EvalError::Invalid(format!(
            "the classifier takes square images, not {h}×{w}"
        )));
    }
    let config = ClassifierConfig::new(c, h, train.num_classes());
    let ad = device.clone().autodiff();
    ad.seed(mix_seed(settings.seed, 10, 0));
    let mut model = config.init(&ad)?;
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut rng = NoiseRng::new(mix_seed(settings.seed, 11, 0));
    for epoch in 0..settings.epochs {
        let order = epoch_permutation(train.len(), mix_seed(settings.seed, 12, 0), epoch as u64);
        let lr = if epoch + 1 == settings.epochs && settings.epochs > 1 {
            settings.lr / 10.0
        } else {
            settings.lr
        };
        let (mut sum, mut count) = (0.0, 0usize);
        for idx in order.chunks(settings.batch_size) {
            let x = batch_tensor(
                train,
                idx,
                Some((&mut rng, settings.max_shift, settings.hflip)),
                &ad,
            );
            let labels: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [idx.len()]), &ad);
            let loss = loss_fn.forward(model.forward(x), y);
            let value = loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(EvalError::Invalid(format!(
                    "classifier training diverged in epoch {epoch} (loss {value}); lower --lr"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            sum += value * idx.len() as f64;
            count += idx.len();
            progress(ClassifierProgress {
                epoch,
                done: count,
                total: train.len(),
                loss: sum / count as f64,
            });
        }
    }
    let model = model.valid();
    let (probs, _) = predict_dataset(&model, test, 256, device);
    let test_accuracy = crate::scores::accuracy(&probs, train.num_classes(), &test.labels);
    let info = ClassifierInfo {
        in_channels: c,
        resolution: h,
        num_classes: train.num_classes(),
        base_channels: config.base_channels,
        feature_dim: config.feature_dim,
        dataset: dataset.to_string(),
        test_accuracy,
        training: settings.clone(),
    };
    Ok((model, info))
}

/// Class probabilities and penultimate features of host images in [-1, 1]
/// (`[n, c, h, w]`), `batch` at a time. Returns (n × classes, n × feature_dim).
pub fn predict(
    model: &Classifier,
    images: &[f32],
    shape: [usize; 4],
    batch: usize,
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let [n, c, h, w] = shape;
    let per = c * h * w;
    let (mut probs, mut feats) = (Vec::new(), Vec::new());
    let host = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32")
    };
    for start in (0..n).step_by(batch.max(1)) {
        let m = batch.max(1).min(n - start);
        let data = TensorData::new(
            images[start * per..(start + m) * per].to_vec(),
            [m, c, h, w],
        );
        let f = model.features(Tensor::from_data(data, device));
        let p = softmax(model.fc2.forward(f.clone()), 1);
        probs.extend(host(p));
        feats.extend(host(f));
    }
    (probs, feats)
}

/// [`predict`] over a whole dataset.
pub fn predict_dataset(
    model: &Classifier,
    ds: &Dataset,
    batch: usize,
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let images: Vec<f32> = (0..ds.len()).flat_map(|i| ds.image_f32(i)).collect();
    let [c, h, w] = ds.image_shape();
    predict(model, &images, [ds.len(), c, h, w], batch, device)
}

/// Saves `NAME.safetensors` and `NAME.json`, atomically each.
pub fn save_classifier(model: &Classifier, info: &ClassifierInfo, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| EvalError::file(path, e.to_string()))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| EvalError::file(path, e.to_string()))?;
    // Sorted header: the same classifier always gives the same bytes.
    let bytes = artifacts::canonical_safetensors(&bytes)
        .map_err(|e| EvalError::file(path, e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    }
    write_atomic(path, &bytes)?;
    let json = serde_json::to_string_pretty(info).expect("serialises");
    write_atomic(&info_path(path), json.as_bytes())?;
    Ok(())
}

/// Loads a classifier saved by [`save_classifier`].
pub fn load_classifier(path: &Path, device: &Device) -> Result<(Classifier, ClassifierInfo)> {
    let ipath = info_path(path);
    let json = std::fs::read_to_string(&ipath).map_err(|e| EvalError::io(&ipath, e))?;
    let info: ClassifierInfo = serde_json::from_str(&json)
        .map_err(|e| EvalError::file(&ipath, format!("not a classifier info file: {e}")))?;
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let mut model = info.config().init(device)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| {
        EvalError::file(path, e.to_string().lines().next().unwrap_or("").to_string())
    })?;
    check_apply(&result).map_err(|r| EvalError::file(path, r))?;
    Ok((model, info))
}
