//! The native side of the golden cases: sampling the shipped weights natively must still give
//! the committed samples of every case in `tests/golden/cases.json` (the one list the browser
//! tests and `tests/make-golden.sh` read too) within float rounding, so the browser is compared
//! against what native code produces today.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use diffusion::sampler::{to_host, ClassChoice, SamplerKind, SamplerSettings};
use diffusion::weights::load_model;
use diffusion::{SampleRequest, Sampling};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The f32 values of a little-endian `.npy` file.
fn npy_values(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not an npy file",
        path.display()
    );
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn native_sampling_reproduces_every_golden_case() {
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/golden/cases.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let weights = root().join(list["weights"].as_str().unwrap());
    let (model, config) = load_model(&weights, &device).unwrap();
    let cases = list["cases"].as_array().unwrap();
    assert!(cases.len() >= 3, "the golden list is nearly empty");
    for case in cases {
        // `trainer sample --class`'s values: an index, null (`none`) or "all".
        let class = match &case["class"] {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(s) => s.clone(),
            k => k.to_string(),
        };
        let num = case["num"].as_u64().unwrap() as usize;
        let labels = ClassChoice::parse(&class)
            .unwrap()
            .grid(num, config.unet.num_classes)
            .unwrap()
            .labels;
        let guidance = case["guidance"].as_f64().unwrap();
        let (seed, steps) = (
            case["seed"].as_u64().unwrap(),
            case["steps"].as_u64().unwrap(),
        );
        let settings = SamplerSettings {
            sampler: SamplerKind::from_name(case["sampler"].as_str().unwrap()).unwrap(),
            num_inference_steps: steps as usize,
            use_karras_sigmas: case["karras_sigmas"].as_bool().unwrap(),
            ..Default::default()
        };
        let scheduler = config.scheduler(&settings).unwrap();
        let request = SampleRequest {
            image_shape: config.unet.image_shape(),
            class_labels: labels,
            guidance_scale: guidance,
            seed,
        };
        let sample = Sampling::new(&model, &scheduler, &request, &device)
            .unwrap()
            .run(|_| {});
        let name = format!("{}.npy", case["name"].as_str().unwrap());
        let golden = npy_values(&root().join("tests/golden").join(&name));
        let values = to_host(sample);
        assert_eq!(values.len(), golden.len(), "{name}");
        // Float rounding (AVX-512 or not, kernel changes) moves a sample by ~1e-5 (0/255 per
        // pixel); a changed sampler, schedule, noise stream, model or weights by far more.
        let max = values
            .iter()
            .zip(&golden)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max < 1e-4,
            "{name}: max |Δ| {max} against the native sample (run tests/make-golden.sh?)"
        );
    }
}
