//! Turns the one list of golden cases (`tests/golden/cases.json`, also read by
//! `tests/make-golden.sh` and the JS tests) into the table `tests/browser.rs` includes, with
//! each case's native `.npy` embedded (the browser test has no file system).

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let list = root.join("tests/golden/cases.json");
    println!("cargo:rerun-if-changed={}", list.display());
    let text = std::fs::read_to_string(&list).expect("tests/golden/cases.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let mut table = String::from("&[\n");
    for case in json["cases"].as_array().expect("a `cases` array") {
        let class = case["class"].as_u64();
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
        table.push_str(&format!(
            "    GoldenCase {{ class: {class:?}, guidance: {guidance:?}, seed: {seed}, sampler: {sampler:?}, karras_sigmas: {karras}, steps: {steps}, backends: &[{}], name: {name:?}, npy: include_bytes!({:?}) }},\n",
            backends.join(", "),
            npy.canonicalize().expect("the case's .npy (run tests/make-golden.sh)").display().to_string()
        ));
    }
    table.push(']');
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("golden_cases.rs");
    std::fs::write(out, table).expect("writing the case table");
}
