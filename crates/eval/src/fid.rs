//! The Fréchet distance between Gaussians fitted to two feature sets (FID; Heusel et al. 2017,
//! "GANs trained by a two time-scale update rule…", §3 and Eq. 6 of the appendix):
//!
//! FID = ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½)
//!
//! Means and covariances are accumulated in f64; the covariance is the unbiased one (divisor
//! n − 1), as `numpy.cov(rowvar=False)` in pytorch-fid. For the last term we use that
//! Σ₁Σ₂ = A·(AΣ₂) with A = Σ₁^½, whose eigenvalues are those of the symmetric PSD matrix AΣ₂A
//! (AB and BA share their non-zero eigenvalues), so tr((Σ₁Σ₂)^½) = Σᵢ √λᵢ(AΣ₂A). That needs
//! only symmetric eigendecompositions (nalgebra), is exact for singular Σ₁ (n ≤ d), and
//! avoids the complex round-off that a general `sqrtm(Σ₁Σ₂)` has to discard.

use std::collections::HashMap;
use std::path::Path;

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::{EvalError, Result};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Feature mean, `d`.
    pub mean: DVector<f64>,
    /// Unbiased covariance, `d × d`.
    pub cov: DMatrix<f64>,
    /// Number of feature vectors the statistics came from.
    pub n: usize,
}

impl FeatureStats {
    /// Statistics of `features`, `n` rows of `dim` values (row-major). Needs n ≥ 2.
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || features.len() % dim != 0 {
            return Err(EvalError::Invalid(format!(
                "{} feature values are not rows of {dim}",
                features.len()
            )));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(EvalError::Invalid(format!(
                "statistics need at least 2 feature vectors, got {n}"
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::Invalid(format!(
                "feature vector {} has a non-finite value",
                i / dim
            )));
        }
        let x = DMatrix::<f64>::from_row_iterator(n, dim, features.iter().map(|&v| v as f64));
        let mean = x.row_mean().transpose();
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centred.tr_mul(&centred) / (n as f64 - 1.0);
        Ok(Self { mean, cov, n })
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Writes the statistics as safetensors (`mean`, `cov` in f64, `n` in the metadata),
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let mean: Vec<u8> = self.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
        // nalgebra is column-major; the covariance is symmetric, so either order is the same.
        let cov: Vec<u8> = self.cov.iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = |e: safetensors::SafeTensorError| EvalError::file(path, e.to_string());
        let views = vec![
            (
                "cov",
                TensorView::new(Dtype::F64, vec![d, d], &cov).map_err(err)?,
            ),
            (
                "mean",
                TensorView::new(Dtype::F64, vec![d], &mean).map_err(err)?,
            ),
        ];
        let meta = HashMap::from([("n".to_string(), self.n.to_string())]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        }
        artifacts::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// Reads statistics written by [`FeatureStats::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
        let bad = |reason: String| EvalError::file(path, reason);
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
        let n = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("n"))
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad("no sample count `n` in the metadata".into()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F64 {
                return Err(bad(format!("tensor `{name}` is {:?}, not F64", t.dtype())));
            }
            let values = t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            Ok((t.shape().to_vec(), values))
        };
        let (mshape, mean) = read("mean")?;
        let (cshape, cov) = read("cov")?;
        let d = mean.len();
        if mshape != [d] || cshape != [d, d] {
            return Err(bad(format!(
                "shapes {mshape:?} and {cshape:?} are not [d] and [d, d]"
            )));
        }
        Ok(Self {
            mean: DVector::from_vec(mean),
            cov: DMatrix::from_vec(d, d, cov),
            n,
        })
    }
}

/// The principal square root of a symmetric positive semi-definite matrix, V·diag(√λ)·Vᵀ from
/// its symmetric eigendecomposition. Eigenvalues below zero (round-off of a PSD matrix) are
/// taken as zero.
pub fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let eig = SymmetricEigen::new(sym);
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// tr((Σ₁Σ₂)^½) given A = Σ₁^½: the sum of √λ over the eigenvalues of AΣ₂A.
fn trace_sqrt_product(sqrt_a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let m = sqrt_a * b * sqrt_a;
    let sym = (&m + m.transpose()) * 0.5;
    sym.symmetric_eigenvalues()
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum()
}

/// Reference statistics with Σ^½ computed once, for several FIDs against the same reference.
#[derive(Debug, Clone)]
pub struct FidReference {
    stats: FeatureStats,
    sqrt_cov: DMatrix<f64>,
}

impl FidReference {
    /// Prepares `stats` (one symmetric eigendecomposition).
    pub fn new(stats: FeatureStats) -> Self {
        let sqrt_cov = sqrtm_psd(&stats.cov);
        Self { stats, sqrt_cov }
    }

    /// The reference statistics.
    pub fn stats(&self) -> &FeatureStats {
        &self.stats
    }

    /// FID of `other` against this reference.
    pub fn fid(&self, other: &FeatureStats) -> Result<f64> {
        let a = &self.stats;
        if a.dim() != other.dim() {
            return Err(EvalError::Invalid(format!(
                "feature dimensions differ: {} vs {}",
                a.dim(),
                other.dim()
            )));
        }
        let diff = &a.mean - &other.mean;
        let tr = a.cov.trace() + other.cov.trace()
            - 2.0 * trace_sqrt_product(&self.sqrt_cov, &other.cov);
        // Round-off can leave a tiny negative value for identical statistics.
        Ok((diff.norm_squared() + tr).max(0.0))
    }
}

/// FID between two sets of statistics.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    FidReference::new(a.clone()).fid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean: Vec<f64>, cov: DMatrix<f64>) -> FeatureStats {
        FeatureStats {
            mean: DVector::from_vec(mean),
            cov,
            n: 100,
        }
    }

    #[test]
    fn sqrtm_of_known_matrices() {
        let d = DMatrix::from_row_slice(2, 2, &[4.0, 0.0, 0.0, 9.0]);
        let s = sqrtm_psd(&d);
        assert!((s - DMatrix::from_row_slice(2, 2, &[2.0, 0.0, 0.0, 3.0])).norm() < 1e-12);
        // [[5, 4], [4, 5]] = ([[2, 1], [1, 2]])².
        let m = DMatrix::from_row_slice(2, 2, &[5.0, 4.0, 4.0, 5.0]);
        let s = sqrtm_psd(&m);
        assert!((&s - DMatrix::from_row_slice(2, 2, &[2.0, 1.0, 1.0, 2.0])).norm() < 1e-12);
        // A random SPD matrix: S·S = M and S is symmetric.
        let g = DMatrix::from_fn(6, 6, |i, j| ((i * 7 + j * 3) as f64 * 0.37).sin());
        let m = &g * g.transpose() + DMatrix::identity(6, 6) * 0.1;
        let s = sqrtm_psd(&m);
        assert!((&s * &s - &m).norm() < 1e-10 * m.norm());
        assert!((&s - s.transpose()).norm() < 1e-12);
        // Singular PSD: rank one.
        let v = DVector::from_vec(vec![1.0, 2.0, 2.0]);
        let m = &v * v.transpose();
        let s = sqrtm_psd(&m);
        assert!((&s * &s - &m).norm() < 1e-10);
    }

    #[test]
    fn fid_of_a_set_with_itself_is_zero() {
        let f: Vec<f32> = (0..64 * 8)
            .map(|i| ((i as f32) * 0.731).sin() * (1.0 + (i % 8) as f32))
            .collect();
        let s = FeatureStats::from_features(&f, 8).unwrap();
        assert!(frechet_distance(&s, &s).unwrap() < 1e-9);
        // n < d (a singular covariance) works too.
        let s = FeatureStats::from_features(&f[..5 * 8], 8).unwrap();
        assert!(frechet_distance(&s, &s).unwrap() < 1e-9);
    }

    #[test]
    fn fid_between_known_gaussians_equals_the_closed_form() {
        // Diagonal covariances: FID = ‖μ₁ − μ₂‖² + Σᵢ (√a_i − √b_i)².
        let a = stats(
            vec![0.0, 1.0, 2.0],
            DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0, 9.0])),
        );
        let b = stats(
            vec![1.0, 1.0, 0.0],
            DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0, 1.0])),
        );
        let want = (1.0 + 0.0 + 4.0) + (1.0 + 1.0 + 4.0);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-10);
        // Symmetric in its arguments.
        assert!((frechet_distance(&b, &a).unwrap() - want).abs() < 1e-10);
        // Non-commuting covariances: Σ₁ = I·4, Σ₂ = [[2, 1], [1, 2]]. With Σ₁ = 4I,
        // tr((Σ₁Σ₂)^½) = 2 tr(Σ₂^½) = 2 (√3 + 1); FID = 8 + 4 − 4(√3 + 1).
        let a = stats(vec![0.0, 0.0], DMatrix::identity(2, 2) * 4.0);
        let b = stats(
            vec![0.0, 0.0],
            DMatrix::from_row_slice(2, 2, &[2.0, 1.0, 1.0, 2.0]),
        );
        let want = 12.0 - 4.0 * (3f64.sqrt() + 1.0);
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-10);
        assert!((frechet_distance(&b, &a).unwrap() - want).abs() < 1e-10);
    }

    #[test]
    fn statistics_match_numpy_and_round_trip() {
        // numpy: np.cov([[1, 2], [3, 5], [4, 9]], rowvar=False) = [[2.3333, 5.1667], [5.1667, 12.3333]]
        let s = FeatureStats::from_features(&[1.0, 2.0, 3.0, 5.0, 4.0, 9.0], 2).unwrap();
        assert!((s.mean[0] - 8.0 / 3.0).abs() < 1e-12 && (s.mean[1] - 16.0 / 3.0).abs() < 1e-12);
        let want = DMatrix::from_row_slice(2, 2, &[7.0 / 3.0, 31.0 / 6.0, 31.0 / 6.0, 37.0 / 3.0]);
        assert!((&s.cov - want).norm() < 1e-12);
        let dir = std::env::temp_dir().join(format!("fid-stats-{}", std::process::id()));
        let path = dir.join("s.safetensors");
        s.save(&path).unwrap();
        assert_eq!(FeatureStats::load(&path).unwrap(), s);
        std::fs::write(&path, b"junk").unwrap();
        let e = FeatureStats::load(&path).unwrap_err().to_string();
        assert!(e.contains("s.safetensors") && !e.contains('\n'), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_feature_sets_are_clear_errors() {
        assert!(FeatureStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(FeatureStats::from_features(&[1.0, 2.0], 2).is_err());
        let e = FeatureStats::from_features(&[1.0, f32::NAN, 3.0, 4.0], 2).unwrap_err();
        assert!(e.to_string().contains("non-finite"));
    }
}
