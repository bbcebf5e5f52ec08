//! Safetensors files as host tensors in f32: reading (f32, f16 or bf16, widened exactly) and
//! writing (f32 or f16) with a canonical header, so the same tensors give the same bytes.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

/// One tensor on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Its shape, PyTorch's order.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor of `shape` holding `data`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// The 2-D transpose (a Burn `Linear` weight is `[in, out]`, PyTorch's `[out, in]`).
    pub fn transposed(&self) -> Self {
        let [r, c] = self.shape[..] else {
            panic!("transposed() of a {}-D tensor", self.shape.len())
        };
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], data)
    }

    /// The same values with another shape of as many elements.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), self.data.len());
        self.shape = shape;
        self
    }
}

/// Tensors by name, in name order.
pub type Tensors = BTreeMap<String, HostTensor>;

/// The dtype tensors are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

/// Reads every tensor of a safetensors buffer into f32 (from f32, f16 or bf16). Returns the
/// tensors and the dtype they were stored in (the widest, if mixed); an error is one line.
pub fn read(bytes: &[u8]) -> Result<(Tensors, StoredDtype), String> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file ({e})"))?;
    let mut out = Tensors::new();
    let mut stored = None;
    for (name, view) in file.tensors() {
        let raw = view.data();
        let (data, dtype): (Vec<f32>, _) = match view.dtype() {
            Dtype::F32 => (
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                StoredDtype::F32,
            ),
            Dtype::F16 => (
                raw.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                StoredDtype::F16,
            ),
            Dtype::BF16 => (
                raw.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                StoredDtype::Bf16,
            ),
            other => {
                return Err(format!(
                    "tensor `{name}` is {other:?}; expected F32, F16 or BF16"
                ))
            }
        };
        stored = Some(match (stored, dtype) {
            (Some(StoredDtype::F32), _) | (_, StoredDtype::F32) => StoredDtype::F32,
            (_, d) => d,
        });
        out.insert(name, HostTensor::new(view.shape().to_vec(), data));
    }
    Ok((out, stored.unwrap_or(StoredDtype::F32)))
}

/// Writes `tensors` as a safetensors buffer in f32 (or f16, rounded to nearest) with
/// `metadata`, its header canonical (sorted keys): the same tensors give the same bytes.
pub fn write(
    tensors: &Tensors,
    half_precision: bool,
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let encoded: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes = if half_precision {
                t.data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect()
            } else {
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
            (name.clone(), bytes, t.shape.clone())
        })
        .collect();
    let dtype = if half_precision {
        Dtype::F16
    } else {
        Dtype::F32
    };
    let views = encoded
        .iter()
        .map(|(name, bytes, shape)| {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("tensor `{name}`: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let meta = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    artifacts::canonical_safetensors(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_and_f16_round_trip_and_bytes_are_canonical() {
        let mut t = Tensors::new();
        t.insert(
            "b".into(),
            HostTensor::new(vec![2, 3], vec![1.0, -2.5, 3.0, 0.0, 1e-3, 7.0]),
        );
        t.insert("a".into(), HostTensor::new(vec![1], vec![0.5]));
        let bytes = write(&t, false, &[("format", "pt")]).unwrap();
        assert_eq!(write(&t, false, &[("format", "pt")]).unwrap(), bytes);
        let (back, dtype) = read(&bytes).unwrap();
        assert_eq!((back, dtype), (t.clone(), StoredDtype::F32));
        let (half, dtype) = read(&write(&t, true, &[]).unwrap()).unwrap();
        assert_eq!(dtype, StoredDtype::F16);
        assert_eq!(half["b"].data[1], -2.5);
        assert!((half["b"].data[4] - 1e-3).abs() < 1e-6);
        assert!(read(b"nonsense")
            .unwrap_err()
            .contains("not a safetensors file"));
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = HostTensor::new(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let tt = t.transposed();
        assert_eq!(tt.shape, vec![3, 2]);
        assert_eq!(tt.data, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(tt.transposed(), t);
    }
}
