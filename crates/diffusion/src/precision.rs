//! Mixed precision: the dtype a forward pass computes in, with the parameters kept in f32.
//!
//! Burn 0.22.1 has no autocast and no per-module dtype policy; a device has one default float
//! dtype. What it does have is a differentiable [`Tensor::cast`], whose backward casts the
//! gradient back to the source dtype. So mixed precision is built the way PyTorch's autocast
//! behaves for a training step (Micikevicius et al., 2018, "Mixed Precision Training", §3.1):
//!
//! - the f32 parameters stay the master copy that the optimiser, the EMA, gradient clipping and
//!   the checkpoints see;
//! - each step casts them to the compute dtype **inside the autodiff graph**
//!   ([`UNet::autocast`]), so the backward pass runs in bf16 and each gradient reaches its
//!   f32 master through the cast's backward as an f32 tensor;
//! - the U-Net casts its input and time embedding to its parameters' dtype and its output
//!   back to the input's dtype ([`UNet::forward`]), so the loss is computed in f32;
//! - GroupNorm runs in f32 on bf16 inputs (`flex_kernels::group_norm`), with its γ and β left
//!   f32 by [`UNet::autocast`], as under autocast: bf16 keeps 8 significant bits, too few for
//!   x − μ and its square. So does attention
//!   (`flex_kernels::self_attention`): autocast's fused attention keeps its softmax statistics
//!   in f32 inside the kernel, and Burn's attention makes no such promise.
//!
//! bf16 has f32's exponent range, so no loss scaling is needed (unlike f16).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::unet::UNet;

/// The dtype a training step computes in (accelerate's `mixed_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Forward and backward in bf16, parameters, gradients and optimiser state in f32.
    Bf16,
}

impl Precision {
    /// The dtype the forward and backward passes compute in.
    pub fn compute_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = Error;

    /// Parses `f32` (also `fp32`, `no`) or `bf16`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" | "fp32" | "no" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(Error::UnknownPrecision(other.to_string())),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl UNet {
    /// The model as it computes under `precision`: for f32 the model itself; otherwise each
    /// parameter cast to the compute dtype, except GroupNorm's γ and β (GroupNorm runs in f32).
    /// On an autodiff device the casts are nodes of the graph, so the gradients of a loss
    /// computed with the returned model reach `self`'s parameters, in f32
    /// (`GradientsParams::from_grads(grads, self)`).
    pub fn autocast(&self, precision: Precision) -> Cow<'_, UNet> {
        match precision {
            Precision::F32 => Cow::Borrowed(self),
            _ => Cow::Owned(self.clone().map(&mut CastParams {
                dtype: precision.compute_dtype(),
                containers: Vec::new(),
            })),
        }
    }
}

/// The container type Burn's derived `Module::map` names a `GroupNorm`'s fields with.
const GROUP_NORM: &str = "Struct:GroupNorm";

/// Casts every float parameter outside a `GroupNorm`, keeping the cast in the graph (no
/// detach, no new leaf).
struct CastParams {
    dtype: FloatDType,
    /// The container types entered, innermost last.
    containers: Vec<String>,
}

impl ModuleMapper for CastParams {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.containers.last().is_some_and(|c| c == GROUP_NORM) {
            return param;
        }
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;
    use burn::module::ModuleVisitor;
    use burn::tensor::{DType, Device, TensorData};

    fn tiny() -> UNetConfig {
        UNetConfig {
            base_channels: 16,
            channel_mults: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![4],
            resolution: 8,
            num_classes: Some(3),
            num_heads: 2,
            norm_groups: 4,
            // Dropout masks come from Burn's process-wide RNG (and another path under bf16).
            dropout: 0.0,
            ..UNetConfig::mnist()
        }
    }

    /// The dtypes of every float parameter: GroupNorms' and the others'.
    fn dtypes(m: &UNet) -> (Vec<DType>, Vec<DType>) {
        #[derive(Default)]
        struct Dtypes(Vec<String>, Vec<DType>, Vec<DType>);
        impl ModuleVisitor for Dtypes {
            fn enter_module(&mut self, _name: &str, container_type: &str) {
                self.0.push(container_type.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let dtype = p.val().dtype();
                match self.0.last() {
                    Some(c) if c == GROUP_NORM => self.1.push(dtype),
                    _ => self.2.push(dtype),
                }
            }
        }
        let mut v = Dtypes::default();
        m.visit(&mut v);
        (v.1, v.2)
    }

    fn input(device: &Device) -> (Tensor<4>, Vec<f64>, Vec<usize>) {
        let mut rng = crate::NoiseRng::new(5);
        let x = Tensor::<4>::from_data(
            TensorData::new(rng.normal_vec(2 * 64), [2, 1, 8, 8]),
            device,
        );
        (x, vec![10.0, 900.0], vec![0, 3])
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn bf16_forward_follows_the_f32_forward_and_returns_the_input_dtype() {
        let device = Device::flex();
        device.seed(1);
        let model = tiny().init(&device).unwrap().randomize(2, 0.1);
        let (x, t, y) = input(&device);
        let reference = values(model.forward(x.clone(), &t, Some(&y)));
        let cast = model.autocast(Precision::Bf16);
        let (norms, others) = dtypes(&cast);
        // γ and β of the two norms of 8 ResBlocks (2 down, 2 middle, 4 up), of 4 attention
        // blocks (at 4×4: 1 down, 1 middle, 2 up) and of the output norm.
        assert_eq!(norms.len(), 2 * (2 * 8 + 4 + 1), "{norms:?}");
        assert!(norms.iter().all(|&d| d == DType::F32));
        assert!(others.iter().all(|&d| d == DType::BF16));
        let (norms, others) = dtypes(&model);
        assert!(norms.iter().chain(&others).all(|&d| d == DType::F32));
        let out = cast.forward(x, &t, Some(&y));
        assert_eq!(out.dtype(), DType::F32);
        let out = values(out);
        // Relative to the output's scale: bf16's unit roundoff is 2⁻⁸ ≈ 0.4 %, compounded
        // over a dozen layers.
        let scale = reference.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let err = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("bf16 forward: max |Δ| {err} against an output scale of {scale}");
        assert!(scale > 0.1, "a trivial output proves nothing: {scale}");
        assert!(err < 0.05 * scale, "max |Δ| {err} against scale {scale}");
        // … and it is not the f32 computation under another name.
        assert!(err > 0.0);
    }

    #[test]
    fn gradients_reach_the_f32_parameters() {
        let device = Device::flex().autodiff();
        device.seed(1);
        let model = tiny().init(&device).unwrap().randomize(2, 0.1);
        let grads_of = |precision: Precision| {
            let (x, t, y) = input(&device);
            let loss = model
                .autocast(precision)
                .forward(x, &t, Some(&y))
                .powi_scalar(2)
                .mean();
            let grads = loss.backward();
            let mut all = Vec::new();
            struct Collect<'a>(&'a burn::tensor::Gradients, &'a mut Vec<f32>);
            impl ModuleVisitor for Collect<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                    let g = p
                        .val()
                        .grad(self.0)
                        .expect("every parameter has a gradient");
                    assert_eq!(g.dtype(), DType::F32, "gradients are f32");
                    self.1.extend(g.into_data().try_into_vec::<f32>().unwrap());
                }
            }
            model.visit(&mut Collect(&grads, &mut all));
            all
        };
        let (g32, g16) = (grads_of(Precision::F32), grads_of(Precision::Bf16));
        assert_eq!(g32.len(), g16.len());
        let dot: f64 = g32
            .iter()
            .zip(&g16)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let n32: f64 = g32.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let n16: f64 = g16.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (n32 * n16);
        eprintln!("bf16 gradients: cosine {cosine} with f32's, norms {n16} against {n32}");
        assert!(n32 > 0.0 && cosine > 0.99, "cosine {cosine}");
        assert!((n16 / n32 - 1.0).abs() < 0.05, "norms {n16} vs {n32}");
    }
}
