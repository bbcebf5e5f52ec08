//! In-browser tests (wasm-bindgen-test in headless Chromium through chromedriver; flags in
//! `web/webdriver.json`): the exported `Sampler`, on WebGPU (SwiftShader here) and on the CPU
//! (flex compiled to wasm), must reproduce the native golden samples of the shipped weights
//! (`tests/golden/*.npy`, made by `tests/make-golden.sh`) within max |Δ| ≤ 2/255 per pixel, and
//! the schedule and timesteps computed in the browser must equal the native ones exactly.
//!
//! Run by `tests/run-all.sh`:
//! `CHROMEDRIVER=/usr/bin/chromedriver CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
//!  cargo test --release --target wasm32-unknown-unknown -p web`
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;
use web::{yield_to_browser, Sampler};

wasm_bindgen_test_configure!(run_in_browser);

const WEIGHTS: &[u8] = include_bytes!("../../weights/mnist.safetensors");
const CONFIG: &str = include_str!("../../weights/mnist.json");
const SCHEDULE_CSV: &str = include_str!("../../tests/golden/schedule-linear-1000.csv");

/// (class, guidance, seed, steps, golden .npy)
const CASES: [(Option<u32>, f64, u32, u32, &[u8]); 3] = [
    (
        Some(3),
        3.0,
        0,
        20,
        include_bytes!("../../tests/golden/case-3-w3-s0-n20.npy"),
    ),
    (
        Some(7),
        1.0,
        42,
        20,
        include_bytes!("../../tests/golden/case-7-w1-s42-n20.npy"),
    ),
    (
        None,
        0.0,
        7,
        20,
        include_bytes!("../../tests/golden/case-none-w0-s7-n20.npy"),
    ),
];

/// The f32 values of a little-endian `.npy` file.
fn npy_values(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn to_u8(v: f32) -> i32 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as i32
}

async fn sampler(backend: &str) -> Sampler {
    yield_to_browser().await.expect("yield");
    Sampler::create(WEIGHTS.to_vec(), CONFIG.to_string(), backend.to_string())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating the {backend} sampler failed: {:?}",
                JsValue::from(e)
            )
        })
}

fn options(class: Option<u32>, guidance: f64, seed: u32, steps: u32) -> JsValue {
    let o = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&o, &k.into(), &v).unwrap();
    set("classLabel", class.map_or(JsValue::NULL, JsValue::from));
    set("guidanceScale", guidance.into());
    set("seed", seed.into());
    set("steps", steps.into());
    o.into()
}

async fn check_golden(backend: &str) {
    let s = sampler(backend).await;
    assert_eq!(s.backend(), backend);
    for (class, w, seed, steps, golden) in CASES {
        yield_to_browser().await.expect("yield");
        let r = s
            .sample(options(class, w, seed, steps), None)
            .await
            .unwrap_or_else(|e| panic!("sampling failed: {:?}", JsValue::from(e)));
        let values: js_sys::Float32Array =
            js_sys::Reflect::get(&r, &"values".into()).unwrap().into();
        let values = values.to_vec();
        let golden = npy_values(golden);
        assert_eq!(values.len(), golden.len());
        let max_px = values
            .iter()
            .zip(&golden)
            .map(|(a, b)| (to_u8(*a) - to_u8(*b)).abs())
            .max()
            .unwrap();
        let max_val = values
            .iter()
            .zip(&golden)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let ms = js_sys::Reflect::get(&r, &"totalMs".into())
            .unwrap()
            .as_f64()
            .unwrap();
        web_sys_log(&format!(
            "{backend} class {class:?} w {w} seed {seed}: max |Δ| {max_px}/255 (values {max_val:e}), {ms:.0} ms"
        ));
        assert!(
            max_px <= 2,
            "{backend}: class {class:?} w {w} seed {seed} differs by {max_px}/255 from native"
        );
    }
}

fn web_sys_log(s: &str) {
    wasm_bindgen_test::console_log!("{}", s);
}

#[wasm_bindgen_test]
async fn cpu_wasm_equals_native_golden_samples() {
    check_golden("cpu").await;
}

#[wasm_bindgen_test]
async fn webgpu_equals_native_golden_samples() {
    check_golden("webgpu").await;
}

#[wasm_bindgen_test]
async fn schedule_and_timesteps_equal_native_ones() {
    let s = sampler("cpu").await;
    let native: Vec<f64> = SCHEDULE_CSV
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    let browser = s.alphas_cumprod().map_err(JsValue::from).unwrap();
    assert_eq!(browser.len(), 1000);
    // The CSV holds f64 printed with 17 significant digits: equal bit for bit.
    assert_eq!(browser, native);
    let ts = s.timesteps("ddim", 5).map_err(JsValue::from).unwrap();
    // The native sampler's `leading` spacing (diffusers' default, steps_offset 0).
    assert_eq!(ts, vec![800, 600, 400, 200, 0]);
    let ts50 = s.timesteps("ddim", 50).map_err(JsValue::from).unwrap();
    assert_eq!(ts50, (0..50).map(|i| 980 - 20 * i).collect::<Vec<u32>>());
}
