//! Turns the one list of golden cases (`tests/golden/cases.json`, also read by
//! `tests/make-golden.sh` and the JS tests) into the table `tests/browser.rs` includes, with
//! each case's native `.npy` embedded (the browser test has no file system).

use std::path::Path;

fn main() {
    // The threads bundle (web/build.sh: nightly std with atomics): a shared, imported memory
    // and the TLS exports wasm-bindgen's thread transform needs (rustc does not ask the linker
    // for them by itself); web/build.sh sets the maximum memory (4 GiB).
    if std::env::var_os("CARGO_FEATURE_THREADS").is_some() {
        for arg in [
            "--shared-memory",
            "--import-memory",
            "--export=__wasm_init_tls",
            "--export=__tls_size",
            "--export=__tls_align",
            "--export=__tls_base",
        ] {
            println!("cargo:rustc-link-arg-cdylib={arg}");
        }
    }
    // At run time, not `env!`: a build script compiled in another checkout that shares the
    // target dir (CI's copy) is reused as is, and would read that checkout's list.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("..");
    let list = root.join("tests/golden/cases.json");
    println!("cargo:rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).expect("tests/golden/cases.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let mut table = String::from("&[\n");
    for case in json["cases"].as_array().expect("a `cases` array") {
        // `trainer sample --class`'s values: an index, null (`none`) or "all".
        let class = match &case["class"] {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(s) => s.clone(),
            k => k.to_string(),
        };
        let num = case["num"].as_u64().expect("num");
        let guidance = case["guidance"].as_f64().expect("guidance");
        let seed = case["seed"].as_u64().expect("seed");
        let steps = case["steps"].as_u64().expect("steps");
        let sampler = case["sampler"].as_str().expect("sampler");
        let karras = case["karras_sigmas"].as_bool().expect("karras_sigmas");
        let backends: Vec<String> = case["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| format!("{:?}", b.as_str().expect("backend name")))
            .collect();
        let name = format!("{}.npy", case["name"].as_str().expect("name"));
        let npy = root.join("tests/golden").join(&name);
        println!("cargo:rerun-if-changed={}", npy.display());
        // A case without its .npy yet (before tests/make-golden.sh ran) fails in its test, not
        // here: the bundles build without the golden files.
        let npy = match npy.canonicalize() {
            Ok(path) => format!("Some(include_bytes!({:?}))", path.display().to_string()),
            Err(_) => "None".to_string(),
        };
        table.push_str(&format!(
            "    GoldenCase {{ class: {class:?}, num: {num}, guidance: {guidance:?}, seed: {seed}, sampler: {sampler:?}, karras_sigmas: {karras}, steps: {steps}, backends: &[{}], name: {name:?}, npy: {npy} }},\n",
            backends.join(", "),
        ));
    }
    table.push(']');
    let out_dir = std::env::var("OUT_DIR").unwrap();
    let out = Path::new(&out_dir).join("golden_cases.rs");
    std::fs::write(out, table).expect("writing the case table");
    // The weights the cases are sampled from (NAME.safetensors + NAME.json), as a pair of
    // `include_bytes!`/`include_str!` for the browser tests.
    let weights = root.join(json["weights"].as_str().expect("a `weights` path"));
    let config = weights.with_extension("json");
    for f in [&weights, &config] {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let pair = format!(
        "(include_bytes!({:?}), include_str!({:?}))",
        weights.display().to_string(),
        config.display().to_string()
    );
    std::fs::write(Path::new(&out_dir).join("golden_weights.rs"), pair)
        .expect("writing the weights include");
}
